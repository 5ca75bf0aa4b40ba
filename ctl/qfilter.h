/*
 * qfilter.h - selecting queued messages the way `convoyctl queue list` and
 * the queue actions (retry, hold, release, delete, bounce) both do, and the
 * age buckets of `convoyctl queue summary` (Postfix qshape's columns).
 * Private to ctl/; pure logic on struct queue_message, no I/O.
 *
 * Matching: a message is selected when
 *  - its sender matches --from (when given), its arrival is at least
 *    --older and at most --younger ago (when given), and
 *  - at least one recipient matches every recipient criterion given:
 *    --state (the recipient's state), --to (its address), --domain (the
 *    domain of its address, exactly, case-insensitive), --reason (the text
 *    of its last result: "DSN reply text" plus the MTA-STS verdict).
 * Regular expressions are POSIX extended, case-insensitive, unanchored
 * (regcomp REG_EXTENDED | REG_ICASE | REG_NOSUB).
 */
#ifndef CONVOY_QFILTER_H
#define CONVOY_QFILTER_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "queue.h"

struct qfilter {
    unsigned states; /* bit (1u << enum queue_rcpt_state); 0: any */
    bool has_from, has_to, has_reason;
    regex_t from, to, reason;
    char domain[256];  /* "" : any */
    int64_t older_s;   /* -1: not given */
    int64_t younger_s; /* -1: not given */
    bool any;          /* at least one criterion was given */
};

/* An empty filter (matches everything). */
void qfilter_init(struct qfilter *f);
/* Free the compiled expressions. */
void qfilter_free(struct qfilter *f);

/*
 * Apply one command-line option to f: opt is "--state", "--from", "--to",
 * "--domain", "--reason", "--older" or "--younger" and val its value.
 * Returns 1 when opt is a filter option and val was good, 0 when opt is not
 * a filter option (f unchanged), or a negative enum err with a one-line
 * explanation in why (bad state name, bad regex, bad duration).
 * --state may be given more than once (any of them matches).
 */
int qfilter_option(struct qfilter *f, const char *opt, const char *val, char *why, size_t why_size);

/* Does recipient r (of a message that passed the message criteria) match? */
bool qfilter_rcpt(const struct qfilter *f, const struct queue_rcpt *r);
/* Does message m match at now_ms? */
bool qfilter_match(const struct qfilter *f, const struct queue_message *m, int64_t now_ms);

/*
 * The reason a recipient waits, in one line: "DSN TEXT" then, when an MTA-STS
 * policy applied or an MX was tried, " (mx=HOST[IP], sts=MODE id=ID)". ""
 * when there is no result. Control characters become spaces.
 */
void qfilter_reason(const struct queue_rcpt *r, char *out, size_t size);

/* qshape's columns: ages up to 5, 10, 20, 40, 80, 160, 320, 640, 1280
 * minutes, then more. */
#define QSHAPE_BUCKETS 10
extern const char *const qshape_labels[QSHAPE_BUCKETS];
/* The column of a message age in ms (negative ages count as 0). */
int qshape_bucket(int64_t age_ms);

#endif
