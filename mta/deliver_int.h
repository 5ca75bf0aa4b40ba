/*
 * deliver_int.h - private to the delivery engine (mta/deliver*.c,
 * mta/sched*.c, mta/bounce.c, mta/pausefile.c): the DSN builder and small
 * helpers that the unit tests reach directly. The daemon uses mta/delivery.h,
 * and control_queue.c checks pause requests with pause_domain_ok().
 */
#ifndef CONVOY_DELIVER_INT_H
#define CONVOY_DELIVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

/* ---- bounce.c: delivery status notifications (RFC 3464) ----------------- */

/* One recipient of a DSN's per-recipient part (RFC 3464 2.3). */
struct dsn_rcpt {
    const char *addr;        /* Final-Recipient (rfc822) */
    const char *orcpt;       /* RFC 3461 ORCPT as given ("rfc822;a@b"), or NULL */
    const char *action;      /* "failed" or "delayed" (RFC 3464 2.3.3) */
    const char *status;      /* "5.1.1" */
    const char *remote_mta;  /* MX host name, or NULL when none was reached */
    const char *diag;        /* the remote reply ("550 5.1.1 ..."), or NULL */
    const char *reason;      /* human text for the first part */
    int64_t last_attempt_ms; /* 0: not given */
};

/* A DSN to build. */
struct dsn_msg {
    const char *reporting_mta; /* our host name */
    const char *queue_id;      /* of the original message */
    const char *sender;        /* the original sender: the DSN goes there */
    const char *envid;         /* RFC 3461 ENVID (xtext), or NULL */
    int64_t arrival_ms;
    int64_t now_ms;
    bool ret_full;        /* RET=FULL: whole message, else headers */
    bool delayed;         /* a delay warning, not a failure */
    struct view original; /* the original message as queued */
    const struct dsn_rcpt *rcpts;
    size_t nrcpt;
};

/*
 * Build the DSN message (RFC 3464 multipart/report; RFC 6522 report-type
 * delivery-status) with CRLF line ends: a human-readable part, the
 * message/delivery-status part, then the original headers
 * (text/rfc822-headers) or, with ret_full, the whole original
 * (message/rfc822). The boundary is checked not to occur in the original.
 * 0, ERR_TOOBIG (out's max), ERR_INVAL (no recipients, null sender).
 */
int dsn_build(const struct dsn_msg *d, struct buf *out);

/* The length of the header section of msg (up to and including the empty
 * line, CRLF or LF), or msg.len when there is no body. */
size_t dsn_header_len(struct view msg);

/* ---- deliver.c helpers ---------------------------------------------------- */

/* The domain of an address ("a@B.example" -> "b.example", lower-cased) into
 * out; "" for an address without '@'. */
void deliver_domain_of(const char *addr, char *out, size_t size);

/* Does a recipient's NOTIFY bits (QUEUE_NOTIFY_*, RFC 3461 4.1) ask for a
 * failure DSN? 0 means NOTIFY was not given: failures are reported. */
bool deliver_wants_failure_dsn(unsigned notify);

/* ---- pauses (deliver_admin.c, asked by deliver.c) ---------------------------- */

/* Is delivery to domain paused at now_ms (domain NULL: is everything
 * paused)? *until_ms is the pause's end (0: until resumed). Ended pauses
 * are dropped here. */
bool deliver_paused(const char *domain, int64_t now_ms, int64_t *until_ms);
/* Read <queue_directory>/pauses into the table (delivery_start(), before
 * the first lease). Pauses that ended meanwhile are dropped and logged; a
 * damaged line is logged as FILE:LINE: reason and skipped; an unreadable
 * file is logged and ignored. Never fails. */
struct mta;
void deliver_pause_load(struct mta *m);
/* Writes of the pause table in progress or waited for (for shutdown). */
size_t deliver_pause_busy(void);
/* deliver.c: the pause table changed: give waiting jobs of paused
 * destinations back to the queue, and lease again if delivery resumed. */
void deliver_pause_changed(void);

/* ---- pausefile.c: the pause table on disk (<queue_directory>/pauses) ------------ */

#define PAUSE_FILE "pauses"
#define PAUSE_FILE_MAGIC "convoy-pauses 1"
#define PAUSE_DOMAIN_MAX 256
#define PAUSE_REASON_MAX 256

/* One pause: of a domain, or of all delivery (domain ""). */
struct pause_rec {
    char domain[PAUSE_DOMAIN_MAX]; /* lower case; "": all delivery */
    char reason[PAUSE_REASON_MAX];
    int64_t since_ms;
    int64_t until_ms; /* 0: until resumed */
};

/* May s name a paused domain: 1..255 bytes, no spaces or control
 * characters, not "*" (which stands for all delivery in the file), not
 * starting with '#' (a comment in the file)? */
bool pause_domain_ok(const char *s);
/* Copy a reason with control characters made spaces, cut to size. */
void pause_reason_clean(const char *in, char *out, size_t size);
/* The file's text for n records (the magic line first). 0 or ERR_TOOBIG. */
int pause_file_format(const struct pause_rec *r, size_t n, struct buf *out);
/* A problem of the file at line: reported, and the line skipped. */
typedef void (*pause_problem_cb)(void *arg, unsigned line, const char *why);
/* Parse a pause file: the good records into out (at most max; a second
 * record of the same domain is a problem), every problem to cb. Returns how
 * many records were read. Expired records are returned too: the caller
 * decides about them. */
size_t pause_file_parse(const char *text, size_t len, struct pause_rec *out, size_t max,
                        pause_problem_cb cb, void *arg);

/* Postfix's delay numbers: "0.12", "3.4", "12", "1234" (two significant
 * decimals below 10 s, one below 100 s, none above). */
void deliver_format_delay(int64_t ms, char *out, size_t size);

#endif
