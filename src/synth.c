/* synth.c -- the sample catalog and the synthetic clickstream; see synth.h.
 *
 * The catalog is built from the tables below with a fixed seed, so it never
 * depends on the stream's seed. The stream is a discrete-event simulation:
 * every user has the simulated time of their next event, a min-heap picks the
 * earliest, and a small per-user state machine decides what that user does
 * next (search at the start of a session, view, click, add to cart, favourite,
 * check out at the end). Drawing every random number from one generator in
 * heap order is what makes a run reproducible.
 *
 * The shapes that matter to the service are deliberate: users come back after
 * hours or days (affinity decay and the copy interval see real gaps), their
 * activity is heavy-tailed (a few users generate much of the traffic), item
 * popularity inside a category is Zipfian (a head of bestsellers and a long
 * tail), and a purchase always follows an add_to_cart of the same item in the
 * same session. Generation is allocation-free per event: the strings of an
 * event live in the generator and are overwritten by the next one. */
#include "synth.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* ------------------------------------------------------------------------
 * Static tables: attributes, brands, categories.
 * ------------------------------------------------------------------------ */

typedef struct {
    const char *id, *zh, *en;
} synth_attr_def;

/* Ids are shared across categories where the selling point is the same, so a
 * user who likes long battery life in phones is recognised in headphones. */
static const synth_attr_def synth_attr_defs[] = {
    {"hd_screen", "高清屏幕", "high-definition screen"},
    {"fast_cpu", "高性能处理器", "high-performance processor"},
    {"long_battery", "长续航", "long battery life"},
    {"fast_charging", "快速充电", "fast charging"},
    {"wide_camera", "超广角摄像头", "ultra-wide camera"},
    {"slim", "轻薄机身", "slim design"},
    {"large_storage", "大容量存储", "large storage"},
    {"lightweight", "轻盈便携", "lightweight"},
    {"waterproof", "防水设计", "waterproof"},
    {"heart_rate", "心率监测", "heart-rate monitoring"},
    {"gps", "精准GPS定位", "accurate GPS"},
    {"sleep_tracking", "睡眠监测", "sleep tracking"},
    {"always_on", "息屏显示", "always-on display"},
    {"backlit_keyboard", "背光键盘", "backlit keyboard"},
    {"discrete_gpu", "独立显卡", "dedicated graphics"},
    {"noise_cancel", "主动降噪", "active noise cancelling"},
    {"hifi_sound", "高保真音质", "hi-fi sound"},
    {"low_latency", "低延迟", "low latency"},
    {"comfortable_fit", "佩戴舒适", "comfortable fit"},
    {"high_resolution", "高像素传感器", "high-resolution sensor"},
    {"stabilization", "光学防抖", "optical image stabilization"},
    {"video_4k", "4K视频录制", "4K video recording"},
    {"optical_zoom", "光学变焦", "optical zoom"},
    {"stylus_support", "支持手写笔", "stylus support"},
    {"voice_control", "语音控制", "voice control"},
    {"app_control", "手机远程控制", "app remote control"},
    {"energy_saving", "节能省电", "energy saving"},
    {"easy_install", "安装简便", "easy installation"},
    {"multi_device", "多设备联动", "works with your other devices"},
    {"quiet", "静音设计", "quiet operation"},
    {"cushioning", "缓震回弹", "responsive cushioning"},
    {"breathable", "透气网面", "breathable mesh"},
    {"grip", "防滑耐磨", "non-slip grip"},
    {"hydrating", "深层补水", "deep hydration"},
    {"gentle", "温和无刺激", "gentle on skin"},
    {"sun_protection", "高倍防晒", "high SPF protection"},
    {"anti_aging", "抗初老", "anti-aging"},
    {"natural", "天然成分", "natural ingredients"},
    {"one_touch", "一键萃取", "one-touch brewing"},
    {"milk_frother", "奶泡功能", "milk frother"},
    {"quick_heat", "快速加热", "fast heat-up"},
    {"easy_clean", "易于清洁", "easy to clean"},
};

/* Fictional brands: (zh, en). The en name is the catalog's brand field. */
static const char *const synth_brand_defs[][2] = {
    {"星河", "Starriver"}, {"青岚", "Qinglan"},    {"云帆", "Cloudsail"}, {"极光", "Aurorix"},
    {"赤狐", "Redfox"},    {"蓝鲸", "Bluewhale"},  {"松果", "Pinecone"},  {"远山", "Farhill"},
    {"晨曦", "Dawnlight"}, {"白鹭", "Egretta"},    {"木棉", "Kapokia"},   {"溪谷", "Brookvale"},
    {"飞羽", "Featherly"}, {"墨竹", "Inkbamboo"},  {"朗月", "Brightmoon"}, {"初雪", "Firstsnow"},
};

#define SYNTH_LIST 8 /* room in the NULL-terminated lists below */

typedef struct {
    const char *id, *zh, *en; /* category id; its name, also the search query */
    unsigned n_items;
    int64_t price_lo, price_hi; /* CNY */
    const char *brands[SYNTH_LIST];
    const char *series[SYNTH_LIST];
    const char *nouns[SYNTH_LIST][2]; /* (zh, en) product nouns for titles */
    const char *attrs[12];
} synth_category_def;

static const synth_category_def synth_category_defs[] = {
    {"phones", "手机", "phones", 96, 999, 8999,
     {"Starriver", "Qinglan", "Aurorix", "Redfox", "Pinecone"},
     {"X", "S", "Note", "Pro"},
     {{"智能手机", "Smartphone"}},
     {"hd_screen", "fast_cpu", "long_battery", "fast_charging", "wide_camera", "slim",
      "large_storage"}},
    {"smartwatches", "智能手表", "smartwatches", 64, 399, 3999,
     {"Starriver", "Aurorix", "Featherly", "Farhill"},
     {"W", "Fit", "Active", "GT"},
     {{"智能手表", "Smartwatch"}},
     {"heart_rate", "gps", "sleep_tracking", "always_on", "long_battery", "waterproof",
      "fast_charging", "hd_screen"}},
    {"laptops", "笔记本电脑", "laptops", 80, 2999, 14999,
     {"Qinglan", "Cloudsail", "Redfox", "Bluewhale", "Inkbamboo"},
     {"Book", "Air", "Pro", "G"},
     {{"笔记本电脑", "Laptop"}},
     {"fast_cpu", "long_battery", "slim", "lightweight", "hd_screen", "backlit_keyboard",
      "discrete_gpu", "large_storage", "quiet"}},
    {"headphones", "耳机", "headphones", 90, 99, 2999,
     {"Aurorix", "Pinecone", "Brightmoon", "Featherly", "Dawnlight"},
     {"Buds", "Studio", "Sport", "Max"},
     {{"无线耳机", "Wireless Earbuds"}, {"头戴式耳机", "Over-Ear Headphones"}},
     {"noise_cancel", "hifi_sound", "low_latency", "comfortable_fit", "long_battery",
      "waterproof", "lightweight"}},
    {"cameras", "相机", "cameras", 60, 1999, 19999,
     {"Farhill", "Egretta", "Firstsnow", "Starriver"},
     {"Z", "Go", "Vista", "Trek"},
     {{"数码相机", "Digital Camera"}, {"运动相机", "Action Camera"}},
     {"high_resolution", "stabilization", "video_4k", "optical_zoom", "waterproof",
      "lightweight", "long_battery"}},
    {"tablets", "平板电脑", "tablets", 56, 1499, 7999,
     {"Starriver", "Qinglan", "Cloudsail", "Redfox"},
     {"Tab", "Pad", "Air", "Max"},
     {{"平板电脑", "Tablet"}},
     {"hd_screen", "stylus_support", "long_battery", "fast_cpu", "slim", "large_storage",
      "fast_charging"}},
    {"smart_home", "智能家居", "smart home", 84, 49, 1999,
     {"Pinecone", "Kapokia", "Brookvale", "Bluewhale", "Dawnlight"},
     {"Voice", "Lumi", "Guard", "Link"},
     {{"智能音箱", "Smart Speaker"}, {"智能灯泡", "Smart Bulb"}, {"智能门锁", "Smart Lock"},
      {"智能插座", "Smart Plug"}},
     {"voice_control", "app_control", "energy_saving", "easy_install", "multi_device",
      "quiet"}},
    {"running_shoes", "跑鞋", "running shoes", 72, 299, 1499,
     {"Redfox", "Featherly", "Farhill", "Brookvale"},
     {"Run", "Swift", "Trail", "Pace"},
     {{"跑鞋", "Running Shoes"}},
     {"cushioning", "breathable", "grip", "lightweight", "waterproof"}},
    {"skincare", "护肤品", "skincare", 88, 79, 1199,
     {"Egretta", "Kapokia", "Firstsnow", "Brightmoon", "Inkbamboo"},
     {"Aqua", "Glow", "Pure", "Shield"},
     {{"保湿面霜", "Moisturizing Cream"}, {"精华液", "Serum"}, {"洁面乳", "Cleanser"},
      {"防晒霜", "Sunscreen"}},
     {"hydrating", "gentle", "sun_protection", "anti_aging", "natural"}},
    {"coffee_machines", "咖啡机", "coffee machines", 48, 299, 9999,
     {"Bluewhale", "Dawnlight", "Brookvale", "Cloudsail"},
     {"C", "Barista", "Crema", "Duo"},
     {{"咖啡机", "Coffee Machine"}, {"意式咖啡机", "Espresso Machine"}},
     {"one_touch", "milk_frother", "quick_heat", "easy_clean", "quiet", "energy_saving",
      "app_control"}},
};

#define SYNTH_N_CATEGORIES UTIL_ARRAY_LEN(synth_category_defs)
#define SYNTH_CATALOG_SEED 0x636f707973747265ULL /* "copystre": not the stream's seed */
#define SYNTH_CATALOG_UPDATED_MS 1704067200000LL  /* 2024-01-01T00:00:00Z */
#define SYNTH_MODELS 9                            /* model numbers 1..9 per series */

/* ------------------------------------------------------------------------
 * Behaviour. Shares are per opportunity; the comments say what they yield.
 * ------------------------------------------------------------------------ */

#define SYNTH_NO_LOCALE 0.03   /* users whose front end sends no locale */
#define SYNTH_ZH 0.60          /* of the others, share in zh-CN */
#define SYNTH_P_SEARCH 0.30    /* sessions that start with a search */
#define SYNTH_P_FAVCAT 0.85    /* category picks among the user's favourites */
#define SYNTH_P_SWITCH 0.15    /* browse steps that move to another category */
#define SYNTH_P_CLICK 0.30     /* item visits entered by a click (on a listing) */
#define SYNTH_P_CART 0.20      /* views followed by add_to_cart */
#define SYNTH_P_FAVORITE 0.03  /* views followed by a favourite */
#define SYNTH_P_BUY 0.35       /* carted items bought at the end of the session */
#define SYNTH_ZIPF_S 1.1
#define SYNTH_CART_MAX 16
#define SYNTH_STEPS_MAX 50     /* item visits per session */
#define SYNTH_MEAN_STEPS 5.0
#define SYNTH_ACTIVITY_ALPHA 1.3 /* Pareto tail of sessions per day */
#define SYNTH_ACTIVITY_MAX 60.0
#define SYNTH_BASE_GAP_MS (3.0 * 86400e3) /* mean gap between sessions at activity 1 */
#define SYNTH_MIN_GAP_MS (20 * 60000LL)    /* a new session, not a pause */
#define SYNTH_STEP_MEAN_MS 75e3
#define SYNTH_STEP_MIN_MS 4000
#define SYNTH_STEP_MAX_MS (15 * 60000)

enum { LOC_NONE = 0, LOC_ZH, LOC_EN };
enum { LANG_ZH = 0, LANG_EN };
enum { PH_IDLE = 0, PH_BROWSE, PH_VIEW, PH_CART, PH_FAVORITE, PH_CHECKOUT };

typedef struct {
    int64_t next_ms;          /* simulated time of this user's next event */
    double gap_mean_ms;       /* mean time between sessions */
    float fav_cum[3];         /* cumulative weights of fav[] */
    uint8_t fav[3], n_fav;
    uint8_t locale, lang, phase, focus;
    uint8_t n_cart, n_buy, n_paid;
    uint16_t steps_left;
    uint32_t item;            /* catalog index of the item in hand */
    uint32_t session;         /* sessions started so far */
    uint32_t cart[SYNTH_CART_MAX], buy[SYNTH_CART_MAX];
} synth_user;

typedef struct {
    uint32_t first, n;        /* the category's slice of zipf_item / zipf_cdf */
} synth_slice;

struct synth {
    uint64_t seed;
    uint64_t rng[4];
    uint64_t seq;             /* events generated */
    catalog_item *items;
    size_t n_items;
    synth_slice cats[SYNTH_N_CATEGORIES];
    uint32_t *zipf_item;      /* per category, catalog indexes by popularity rank */
    double *zipf_cdf;         /* per category, cumulative popularity by rank */
    synth_user *users;
    uint32_t *heap;           /* user indexes, min-heap on (next_ms, index) */
    uint32_t n_users;
    char event_id[48], user_id[16], session_id[64];
};

/* Constant strings events point at. click_event's fields are not const
 * because decoded events own theirs; ours are borrowed and never written. */
static char synth_cny[] = "CNY", synth_zh_cn[] = "zh-CN", synth_en_us[] = "en-US";

/* ------------------------------------------------------------------------
 * Random numbers: xoshiro256**, seeded through splitmix64.
 * ------------------------------------------------------------------------ */


static void synth_seed(uint64_t rng[4], uint64_t seed) {
    for (int i = 0; i < 4; i++) rng[i] = util_splitmix64(&seed);
}

static inline uint64_t synth_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t synth_rand(uint64_t s[4]) {
    uint64_t r = synth_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = synth_rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1). */
static inline double synth_unit(uint64_t s[4]) { return (double)(synth_rand(s) >> 11) * 0x1.0p-53; }

/* Uniform in [0, n); the bias of the multiply-shift is below 2^-32 * n. */
static inline uint32_t synth_below(uint64_t s[4], uint32_t n) {
    return (uint32_t)(((synth_rand(s) >> 32) * n) >> 32);
}

static inline double synth_exp(uint64_t s[4], double mean) {
    return -mean * log1p(-synth_unit(s));
}

/* ------------------------------------------------------------------------
 * The catalog.
 * ------------------------------------------------------------------------ */

static char *synth_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *synth_printf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = n < 0 ? NULL : malloc((size_t)n + 1);
    if (!p) return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static const char *const *synth_brand(const char *en) {
    for (size_t i = 0; i < UTIL_ARRAY_LEN(synth_brand_defs); i++)
        if (strcmp(synth_brand_defs[i][1], en) == 0) return synth_brand_defs[i];
    return NULL;
}

static const synth_attr_def *synth_attr(const char *id) {
    for (size_t i = 0; i < UTIL_ARRAY_LEN(synth_attr_defs); i++)
        if (strcmp(synth_attr_defs[i].id, id) == 0) return &synth_attr_defs[i];
    return NULL;
}

static size_t synth_list_len(const char *const *list, size_t cap) {
    size_t n = 0;
    while (n < cap && list[n]) n++;
    return n;
}

/* A (zh-CN, en-US) pair; 0 or -1 when memory runs out (the caller's
 * catalog_item_clear() releases what was made). */
static int synth_localized(localized **out, size_t *n, const char *zh, const char *en) {
    localized *v = calloc(2, sizeof *v);
    if (!v) return -1;
    *out = v;
    *n = 2;
    v[0].locale = strdup("zh-CN");
    v[0].text = strdup(zh);
    v[1].locale = strdup("en-US");
    v[1].text = strdup(en);
    return v[0].locale && v[0].text && v[1].locale && v[1].text ? 0 : -1;
}

/* Fills one item of category def from combo (brand, series, model); draws
 * price, attributes and availability from rng. */
static int synth_make_item(catalog_item *it, const synth_category_def *def, unsigned number,
                           unsigned combo, uint64_t rng[4], char *errstr, size_t errlen) {
    size_t n_brands = synth_list_len(def->brands, SYNTH_LIST);
    size_t n_series = synth_list_len(def->series, SYNTH_LIST);
    size_t n_nouns = 0;
    while (n_nouns < SYNTH_LIST && def->nouns[n_nouns][0]) n_nouns++;
    const char *const *brand = synth_brand(def->brands[combo % n_brands]);
    size_t series_ix = (combo / n_brands) % n_series;
    const char *series = def->series[series_ix];
    unsigned model = 1 + (unsigned)(combo / (n_brands * n_series));
    /* The product noun follows the series, as product lines do ("Buds"). */
    const char *const *noun = def->nouns[series_ix % n_nouns];
    if (!brand) return util_err(errstr, errlen, "synth: unknown brand %s", def->brands[0]);

    /* "X5" but "Pro 5": a one-letter series reads as part of the model. */
    const char *sep = strlen(series) > 1 ? " " : "";
    char *zh = synth_printf("%s %s%s%u %s", brand[0], series, sep, model, noun[0]);
    char *en = synth_printf("%s %s%s%u %s", brand[1], series, sep, model, noun[1]);
    int rc = zh && en ? synth_localized(&it->titles, &it->n_titles, zh, en) : -1;
    free(zh);
    free(en);
    it->item_id = synth_printf("%s-%03u", def->id, number);
    it->category = strdup(def->id);
    it->brand = strdup(brand[1]);
    it->currency = strdup("CNY");
    if (rc < 0 || !it->item_id || !it->category || !it->brand || !it->currency) goto oom;

    /* Log-uniform prices ending in 9, as shops price. */
    double lo = log((double)def->price_lo), hi = log((double)def->price_hi);
    int64_t yuan = (int64_t)exp(lo + (hi - lo) * synth_unit(rng));
    yuan = yuan / 10 * 10 + 9;
    it->has_price = 1;
    it->price_micros = yuan * 1000000;

    const char *pool[12];
    size_t n_pool = synth_list_len(def->attrs, 12);
    memcpy(pool, def->attrs, n_pool * sizeof pool[0]);
    size_t k = 2 + synth_below(rng, 4);
    if (k > n_pool) k = n_pool;
    it->attrs = calloc(k, sizeof *it->attrs);
    if (!it->attrs) goto oom;
    for (size_t i = 0; i < k; i++) {
        /* Partial Fisher-Yates: k distinct attributes. */
        size_t j = i + synth_below(rng, (uint32_t)(n_pool - i));
        const char *t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        const synth_attr_def *a = synth_attr(pool[i]);
        if (!a) return util_err(errstr, errlen, "synth: unknown attribute %s", pool[i]);
        it->n_attrs++;
        it->attrs[i].id = strdup(a->id);
        if (!it->attrs[i].id ||
            synth_localized(&it->attrs[i].phrases, &it->attrs[i].n_phrases, a->zh, a->en) < 0)
            goto oom;
    }
    it->available = synth_unit(rng) < 0.95;
    it->updated_ms = SYNTH_CATALOG_UPDATED_MS;
    return 0;
oom:
    return util_err(errstr, errlen, "synth: out of memory");
}

/* Builds every category's items and its popularity ranking. The catalog has
 * its own generator so that it is the same whatever the stream's seed. */
static int synth_build_catalog(synth *s, char *errstr, size_t errlen) {
    uint64_t rng[4];
    synth_seed(rng, SYNTH_CATALOG_SEED);
    size_t total = 0;
    for (size_t c = 0; c < SYNTH_N_CATEGORIES; c++) total += synth_category_defs[c].n_items;
    s->items = calloc(total, sizeof *s->items);
    s->zipf_item = malloc(total * sizeof *s->zipf_item);
    s->zipf_cdf = malloc(total * sizeof *s->zipf_cdf);
    if (!s->items || !s->zipf_item || !s->zipf_cdf)
        return util_err(errstr, errlen, "synth: out of memory");

    for (size_t c = 0; c < SYNTH_N_CATEGORIES; c++) {
        const synth_category_def *def = &synth_category_defs[c];
        size_t n_combos = synth_list_len(def->brands, SYNTH_LIST) *
                          synth_list_len(def->series, SYNTH_LIST) * SYNTH_MODELS;
        unsigned combos[SYNTH_LIST * SYNTH_LIST * SYNTH_MODELS];
        if (def->n_items > n_combos)
            return util_err(errstr, errlen, "synth: category %s has too few brands and series",
                            def->id);
        for (unsigned i = 0; i < n_combos; i++) combos[i] = i;
        uint32_t first = (uint32_t)s->n_items;
        for (unsigned i = 0; i < def->n_items; i++) {
            unsigned j = i + synth_below(rng, (uint32_t)(n_combos - i));
            unsigned t = combos[i];
            combos[i] = combos[j];
            combos[j] = t;
            /* Counted before it is filled, so a half-made item is freed too. */
            catalog_item *it = &s->items[s->n_items++];
            if (synth_make_item(it, def, i + 1, combos[i], rng, errstr, errlen) < 0) return -1;
        }

        /* Popularity does not follow the model numbers: rank a shuffle. */
        s->cats[c] = (synth_slice){first, def->n_items};
        uint32_t *rank = s->zipf_item + first;
        double *cdf = s->zipf_cdf + first, sum = 0;
        for (uint32_t r = 0; r < def->n_items; r++) rank[r] = first + r;
        for (uint32_t r = def->n_items; r-- > 1;) {
            uint32_t j = synth_below(rng, r + 1), t = rank[r];
            rank[r] = rank[j];
            rank[j] = t;
        }
        for (uint32_t r = 0; r < def->n_items; r++) {
            sum += pow(r + 1, -SYNTH_ZIPF_S);
            cdf[r] = sum;
        }
        for (uint32_t r = 0; r < def->n_items; r++) cdf[r] /= sum;
        cdf[def->n_items - 1] = 1.0;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Users and the event loop.
 * ------------------------------------------------------------------------ */

static void synth_make_user(synth *s, synth_user *u, int64_t start_ms) {
    uint64_t *rng = s->rng;
    memset(u, 0, sizeof *u);
    if (synth_unit(rng) < SYNTH_NO_LOCALE) {
        u->locale = LOC_NONE;
        u->lang = synth_unit(rng) < SYNTH_ZH ? LANG_ZH : LANG_EN;
    } else if (synth_unit(rng) < SYNTH_ZH) {
        u->locale = LOC_ZH;
        u->lang = LANG_ZH;
    } else {
        u->locale = LOC_EN;
        u->lang = LANG_EN;
    }

    double x = synth_unit(rng);
    u->n_fav = x < 0.4 ? 1 : x < 0.8 ? 2 : 3;
    uint8_t pool[SYNTH_N_CATEGORIES];
    for (size_t i = 0; i < SYNTH_N_CATEGORIES; i++) pool[i] = (uint8_t)i;
    float w[3], sum = 0;
    for (unsigned i = 0; i < u->n_fav; i++) {
        unsigned j = i + synth_below(rng, (uint32_t)(SYNTH_N_CATEGORIES - i));
        uint8_t t = pool[i];
        pool[i] = pool[j];
        pool[j] = t;
        u->fav[i] = pool[i];
        w[i] = 0.2f + (float)synth_unit(rng);
        sum += w[i];
    }
    float acc = 0;
    for (unsigned i = 0; i < u->n_fav; i++) u->fav_cum[i] = (acc += w[i] / sum);

    /* Pareto: most users come back every few days, a few many times a day. */
    double activity = pow(1.0 - synth_unit(rng), -1.0 / SYNTH_ACTIVITY_ALPHA);
    if (activity > SYNTH_ACTIVITY_MAX) activity = SYNTH_ACTIVITY_MAX;
    u->gap_mean_ms = SYNTH_BASE_GAP_MS / activity;
    /* The residual of an exponential gap is the same exponential, so the
     * stream is stationary from its first event. */
    u->next_ms = start_ms + (int64_t)synth_exp(rng, u->gap_mean_ms);
    u->phase = PH_IDLE;
}

static inline int synth_before(const synth *s, uint32_t a, uint32_t b) {
    int64_t ta = s->users[a].next_ms, tb = s->users[b].next_ms;
    return ta < tb || (ta == tb && a < b);
}

static void synth_sift_down(synth *s, size_t i) {
    uint32_t *h = s->heap, x = h[i];
    size_t n = s->n_users;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && synth_before(s, h[c + 1], h[c])) c++;
        if (!synth_before(s, h[c], x)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

synth *synth_new(uint64_t seed, uint32_t n_users, int64_t start_ms, char *errstr, size_t errlen) {
    if (n_users < 1 || n_users > SYNTH_MAX_USERS) {
        util_err(errstr, errlen, "synth: users must be between 1 and %u", SYNTH_MAX_USERS);
        return NULL;
    }
    synth *s = calloc(1, sizeof *s);
    if (!s) {
        util_err(errstr, errlen, "synth: out of memory");
        return NULL;
    }
    s->seed = seed;
    synth_seed(s->rng, seed);
    if (synth_build_catalog(s, errstr, errlen) < 0) goto err;
    s->users = malloc((size_t)n_users * sizeof *s->users);
    s->heap = malloc((size_t)n_users * sizeof *s->heap);
    if (!s->users || !s->heap) {
        util_err(errstr, errlen, "synth: out of memory for %u users", n_users);
        goto err;
    }
    s->n_users = n_users;
    for (uint32_t i = 0; i < n_users; i++) {
        synth_make_user(s, &s->users[i], start_ms);
        s->heap[i] = i;
    }
    for (size_t i = n_users / 2; i-- > 0;) synth_sift_down(s, i);
    return s;
err:
    synth_free(s);
    return NULL;
}

void synth_free(synth *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_items; i++) catalog_item_clear(&s->items[i]);
    free(s->items);
    free(s->zipf_item);
    free(s->zipf_cdf);
    free(s->users);
    free(s->heap);
    free(s);
}

size_t synth_catalog_len(const synth *s) { return s->n_items; }

const catalog_item *synth_catalog(const synth *s) { return s->items; }

static uint8_t synth_pick_category(synth *s, const synth_user *u) {
    if (synth_unit(s->rng) >= SYNTH_P_FAVCAT)
        return (uint8_t)synth_below(s->rng, SYNTH_N_CATEGORIES);
    float x = (float)synth_unit(s->rng);
    for (unsigned i = 0; i + 1 < u->n_fav; i++)
        if (x < u->fav_cum[i]) return u->fav[i];
    return u->fav[u->n_fav - 1];
}

static uint32_t synth_pick_item(synth *s, unsigned category) {
    const synth_slice *sl = &s->cats[category];
    const double *cdf = s->zipf_cdf + sl->first;
    double x = synth_unit(s->rng);
    uint32_t lo = 0, hi = sl->n - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (cdf[mid] > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    return s->zipf_item[sl->first + lo];
}

/* What a view leads to: the funnel's first step. */
static uint8_t synth_after_view(synth *s) {
    double x = synth_unit(s->rng);
    return x < SYNTH_P_CART ? PH_CART : x < SYNTH_P_CART + SYNTH_P_FAVORITE ? PH_FAVORITE
                                                                            : PH_BROWSE;
}

static void synth_cart(synth *s, synth_user *u) {
    for (unsigned i = 0; i < u->n_cart; i++)
        if (u->cart[i] == u->item) return; /* more of the same: one decision */
    if (u->n_cart == SYNTH_CART_MAX) return;
    u->cart[u->n_cart++] = u->item;
    if (synth_unit(s->rng) < SYNTH_P_BUY) u->buy[u->n_buy++] = u->item;
}

/* Simulated time until the user's next event, given the phase it will be in. */
static int64_t synth_gap_ms(synth *s, const synth_user *u) {
    switch (u->phase) {
    case PH_IDLE:
        return SYNTH_MIN_GAP_MS + (int64_t)synth_exp(s->rng, u->gap_mean_ms);
    case PH_VIEW: /* the page a click opened */
        return 1000 + synth_below(s->rng, 5000);
    case PH_CHECKOUT: /* to the checkout, then one order line after another */
        return u->n_paid ? 1000 + synth_below(s->rng, 2000) : 30000 + synth_below(s->rng, 90000);
    default: {
        double ms = synth_exp(s->rng, SYNTH_STEP_MEAN_MS);
        return ms < SYNTH_STEP_MIN_MS ? SYNTH_STEP_MIN_MS
               : ms > SYNTH_STEP_MAX_MS ? SYNTH_STEP_MAX_MS : (int64_t)ms;
    }
    }
}

static char *synth_put_u64(char *p, uint64_t v) {
    char t[20];
    int n = 0;
    do t[n++] = (char)('0' + v % 10);
    while (v /= 10);
    while (n) *p++ = t[--n];
    return p;
}

void synth_next(synth *s, click_event *ev) {
    uint32_t ui = s->heap[0];
    synth_user *u = &s->users[ui];
    int64_t now = u->next_ms;
    event_type type;

    switch (u->phase) {
    case PH_IDLE:
        u->session++;
        u->n_cart = u->n_buy = u->n_paid = 0;
        u->steps_left = (uint16_t)(1 + synth_exp(s->rng, SYNTH_MEAN_STEPS - 0.5));
        if (u->steps_left > SYNTH_STEPS_MAX) u->steps_left = SYNTH_STEPS_MAX;
        u->focus = synth_pick_category(s, u);
        u->phase = PH_BROWSE;
        if (synth_unit(s->rng) < SYNTH_P_SEARCH) {
            type = EV_SEARCH;
            break;
        }
        /* Otherwise the session opens on an item. */
        /* fall through */
    case PH_BROWSE:
        u->steps_left--;
        if (synth_unit(s->rng) < SYNTH_P_SWITCH) u->focus = synth_pick_category(s, u);
        u->item = synth_pick_item(s, u->focus);
        if (synth_unit(s->rng) < SYNTH_P_CLICK) {
            type = EV_CLICK;
            u->phase = PH_VIEW;
            break;
        }
        /* fall through */
    case PH_VIEW:
        type = EV_VIEW;
        u->phase = synth_after_view(s);
        break;
    case PH_CART:
        type = EV_ADD_TO_CART;
        synth_cart(s, u);
        u->phase = PH_BROWSE;
        break;
    case PH_FAVORITE:
        type = EV_FAVORITE;
        u->phase = PH_BROWSE;
        break;
    default: /* PH_CHECKOUT */
        type = EV_PURCHASE;
        u->item = u->buy[u->n_paid++];
        u->phase = u->n_paid < u->n_buy ? PH_CHECKOUT : PH_IDLE;
        break;
    }
    if (u->phase == PH_BROWSE && u->steps_left == 0)
        u->phase = u->n_buy ? PH_CHECKOUT : PH_IDLE;
    u->next_ms = now + synth_gap_ms(s, u);
    synth_sift_down(s, 0);

    s->seq++;
    char *p = s->event_id;
    *p++ = 'e';
    p = synth_put_u64(p, s->seed);
    *p++ = '-';
    *synth_put_u64(p, s->seq) = '\0';
    p = s->user_id;
    *p++ = 'u';
    *synth_put_u64(p, (uint64_t)ui + 1) = '\0';
    p = s->session_id;
    *p++ = 's';
    p = synth_put_u64(p, s->seed);
    *p++ = '-';
    p = synth_put_u64(p, (uint64_t)ui + 1);
    *p++ = '-';
    *synth_put_u64(p, u->session) = '\0';

    memset(ev, 0, sizeof *ev);
    ev->event_id = s->event_id;
    ev->user_id = s->user_id;
    ev->session_id = s->session_id;
    ev->ts_ms = now;
    ev->type = type;
    ev->locale = u->locale == LOC_ZH ? synth_zh_cn : u->locale == LOC_EN ? synth_en_us : NULL;
    if (type == EV_SEARCH) {
        /* Items are grouped by category, so a slice's first index is also
         * the catalog index of one of its items. */
        const synth_category_def *def = &synth_category_defs[u->focus];
        ev->category = s->items[s->cats[u->focus].first].category;
        ev->query = (char *)(u->lang == LANG_ZH ? def->zh : def->en); /* borrowed, read-only */
        return;
    }
    const catalog_item *it = &s->items[u->item];
    ev->item_id = it->item_id;
    ev->category = it->category;
    if (type == EV_ADD_TO_CART || type == EV_PURCHASE) {
        ev->has_price = 1;
        ev->price_micros = it->price_micros;
        ev->currency = synth_cny;
    }
}
