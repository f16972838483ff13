/* policy.h -- whether a copy may be sent at all, whatever its intent.
 *
 * A due copy (intent.h) is checked, in this order, against:
 *
 *   consent       the user has not opted out: an UNSUBSCRIBE reaction or an
 *                 opt_out control message (privacy.h)       -> no_consent
 *   quiet hours   policy.quiet_hours in the user's local time -> quiet_hours
 *   interval      copy.min_interval_s since the user's last copy -> min_interval
 *   caps          policy.max_per_hour copies in the user's current local
 *                 hour, policy.max_per_day in their local day -> cap_hour, cap_day
 *
 * and, once the items are chosen, no item promoted to the user within
 * policy.no_repeat_days is promoted again: the strategies skip such items
 * (like dismissed ones), and a reminder or price drop about one is not sent
 * (repeat). Each reason is counted in
 * copystream_copies_suppressed_total{reason}.
 *
 * The user's time zone. The clickstream carries no time zone, only a locale
 * (ClickEvent.locale), so a user's zone is the one policy.timezones gives
 * their last locale ("zh-CN=Asia/Shanghai,en-US=America/New_York"), and
 * policy.default_timezone for a user without a locale or a locale without a
 * zone. Zones are IANA names resolved with the system's tz database
 * (tzdata) once, at start-up, into tables of UTC offsets with their
 * daylight-saving transitions from 1970 to 2100; after that a lookup is a
 * binary search, no libc time zone call, no global state.
 *
 * Everything is a function of event time (the event's, or the trigger's due
 * time), so replaying the same input gives the same decisions. A policy is
 * read-only once made and may be shared between threads. */
#ifndef COPYSTREAM_POLICY_H
#define COPYSTREAM_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "userstate.h"

typedef struct policy policy;

/* Reads policy.*, copy.min_interval_s and copy.locales' zones, and builds
 * the offset tables. Returns NULL with errstr naming the key and the
 * problem (an unknown zone, a malformed quiet_hours). */
policy *policy_new(const config *c, char *errstr, size_t errlen);
void policy_free(policy *p);

/* The user's UTC offset in seconds at ts_ms: the zone of locale (NULL or
 * "": the default zone). */
int32_t policy_utc_offset(const policy *p, const char *locale, int64_t ts_ms);

/* May a copy go to u at event time ts_ms? Returns 0, or the
 * MET_SUPPRESSED_* reason of the first check that fails (see above). */
int policy_check(const policy *p, const user_state *u, int64_t ts_ms);

/* The end of the quiet hours ts_ms falls in, for the user's locale, or
 * ts_ms when it is not in them: when a delayed trigger may go out instead. */
int64_t policy_quiet_until(const policy *p, const char *locale, int64_t ts_ms);

/* A copy that passed policy_check() at ts_ms is due: moves the user's last
 * copy time and counts it in their local hour and day. Counted whether the
 * copy is then made or withheld (holdout), so both groups meet the same
 * caps. */
void policy_count(const policy *p, user_state *u, int64_t ts_ms);

/* A copy promoting items[n] (util_hash ids) was made at ts_ms: none of them
 * is promoted again for policy.no_repeat_days. Returns 0 or -1 (memory). */
int policy_promoted(const policy *p, user_state *u, const uint64_t *items, size_t n,
                    int64_t ts_ms);

/* Would promoting item at ts_ms repeat it too soon? */
int policy_is_repeat(const policy *p, const user_state *u, uint64_t item, int64_t ts_ms);

#endif
