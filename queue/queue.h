/*
 * queue.h - the durable mail queue: messages, recipients and their delivery
 * state, the schedule of due work. Backed by LMDB; uses base, LMDB, libuv.
 *
 * What is stored
 *  - A message: its envelope (struct queue_envelope) and its body, kept in
 *    chunks of about 64 KiB so no message ever needs one huge value.
 *  - Its recipients, numbered 0..n-1 in the order given, each with its own
 *    state (enum queue_rcpt_state), attempt count, next attempt time and the
 *    results of its last QUEUE_HISTORY_MAX attempts (struct queue_result),
 *    so an operator can see why a recipient waits.
 *  - A schedule ordered by next attempt time; due work is found by a range
 *    scan, never a full scan.
 *
 * Queue IDs are QUEUE_ID_LEN characters of Crockford base32 (0-9, A-Z without
 * I, L, O, U): 48 bits of milliseconds since the epoch then a 32-bit counter.
 * They sort by time as strings, are the same length always, and are never
 * issued twice by one queue (a high-water mark is stored with the data, so a
 * clock stepping back does not reuse an ID).
 *
 * Durability (DESIGN.md, "no data loss")
 *  - Every change (submit, lease, delivered, defer, bounce, hold, release,
 *    remove, retry) is a request handed to the queue's writer thread. The
 *    writer applies all pending requests in one LMDB write transaction, syncs
 *    it to disk, and only then reports each request done (group commit).
 *  - A crash at any moment leaves every committed message intact. Nothing
 *    half-written is visible. Recipients that were leased (active) when the
 *    process died are due again when the queue is next opened read-write.
 *  - Full disk (ENOSPC, EDQUOT, EFBIG), or a map that cannot grow past
 *    max_map_size, is reported as ERR_FULL (answer 452 4.3.1). When the map
 *    is merely full it grows by itself and the transaction is retried.
 *
 * Threads
 *  - queue_open() read-write, every request function (those that take a
 *    callback) and queue_close() are called on the loop thread only.
 *  - Every callback runs on the loop thread, never before the call that
 *    started it returns. If a request function returns an error, its callback
 *    is never called. If it returns 0, its callback is called exactly once
 *    (at the latest inside queue_close()).
 *  - The read functions (queue_list, queue_message_read, queue_body_read,
 *    queue_stats, queue_next_due) are synchronous and may be called from any
 *    thread; each uses its own read transaction and sees one consistent
 *    committed state.
 *
 * Processes: one read-write opener at a time (convoyd); a second read-write
 * open fails with ERR_AGAIN. Any number of read-only openers (convoyctl) may
 * run beside it.
 *
 * Files in options.directory: queue.lmdb (data, mode 0640) and
 * queue.lmdb-lock (LMDB reader table, mode 0660: a read-only opener writes
 * its slot there), so members of the daemon's group can list the queue.
 * The layout of keys and values carries a version; a file of another
 * version is refused with ERR_VERSION and a message saying so.
 */
#ifndef CONVOY_QUEUE_H
#define CONVOY_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"

struct queue;

/* Length of a queue ID, without the NUL. */
#define QUEUE_ID_LEN 16
/* Bytes in a body chunk (16 LMDB overflow pages less the page header). */
#define QUEUE_CHUNK 65520

/* ---- options ------------------------------------------------------------- */

struct queue_options {
    const char *directory;       /* required; must exist for read-write */
    bool read_only;              /* convoyctl: no writer thread, no loop */
    uint64_t initial_map_size;   /* bytes; default 64 MiB */
    uint64_t max_map_size;       /* bytes the map may grow to; default 1 TiB */
    uint64_t message_size_limit; /* largest body accepted; default 50 MiB */
    int64_t minimal_backoff;     /* seconds; default 300 */
    int64_t maximal_backoff;     /* seconds; default 4000 */
    int64_t maximal_lifetime;    /* seconds a recipient may wait; default 5d */
    int64_t bounce_lifetime;     /* the same for null-sender mail; default 5d */
    int64_t lease_time;          /* seconds a lease lasts; default 3600 */
    /* Called on the loop thread after a commit that made new work due (a
     * submission, a release, a retry-now). May be NULL. */
    void (*on_new_work)(void *arg);
    void *on_new_work_arg;
    /* The wall clock in ms; NULL for the real one. Tests use a fake clock.
     * Called on the loop thread (and by the read functions' callers). */
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
};

/* Fill in the defaults above; directory is NULL. */
void queue_options_default(struct queue_options *o);

/*
 * Open (creating it for read-write if absent) the queue in o->directory.
 * loop is required for read-write and ignored for read-only. On error
 * returns a negative enum err and, if why is not NULL, appends one line
 * saying what went wrong, for example:
 *   ERR_NOTFOUND  read-only open and there is no queue in the directory
 *   ERR_VERSION   the file has another layout version (which one is named)
 *   ERR_AGAIN     another process has it open read-write
 * A read-write open returns every lease left by a crashed process to the
 * schedule, due now. The options are copied.
 */
int queue_open(uv_loop_t *loop, const struct queue_options *o, struct queue **out, struct buf *why);

/*
 * Stop accepting requests, let the writer finish and commit every request
 * already accepted, run their callbacks (on this thread, inside this call),
 * then free everything. The loop must run once more afterwards so libuv can
 * release the queue's async handle. queue_close(NULL) does nothing. Not to
 * be called from inside one of the queue's own callbacks.
 */
void queue_close(struct queue *q);

/* ---- the envelope and results --------------------------------------------- */

enum queue_ret { QUEUE_RET_NONE = 0, QUEUE_RET_FULL = 1, QUEUE_RET_HDRS = 2 };

/* Message flags. */
#define QUEUE_F_SMTPUTF8 0x01u
#define QUEUE_F_8BITMIME 0x02u
#define QUEUE_F_TLS 0x04u /* the client used TLS (details in tls) */
/* The sender got the message's one delay warning (delay_warning_time, RFC
 * 3464 Action: delayed): set by queue_delay_warned(), never on submit. */
#define QUEUE_F_DELAY_WARNED 0x08u
/* The message says "TLS-Required: No" (RFC 8689): delivered with
 * opportunistic TLS whatever the recipient domain's policy, and never
 * counted for TLS-RPT (reports carry it: RFC 8460 5.3, no loops). */
#define QUEUE_F_TLS_OPTIONAL 0x10u

/* RFC 3461 NOTIFY bits; 0 means NOTIFY was not given (default behaviour). */
#define QUEUE_NOTIFY_NEVER 0x01u
#define QUEUE_NOTIFY_SUCCESS 0x02u
#define QUEUE_NOTIFY_FAILURE 0x04u
#define QUEUE_NOTIFY_DELAY 0x08u

/* Strings are NUL-terminated; NULL is stored as "". On input they are copied
 * before the call returns. On output they point into storage owned by the
 * struct that holds them. */
struct queue_envelope {
    const char *sender;      /* reverse-path without <>; "" is the null sender */
    int64_t arrival_ms;      /* 0 on submit: the queue's clock */
    const char *client_name; /* as resolved, or "unknown" */
    const char *client_addr; /* IP address text */
    const char *helo;
    const char *auth_user; /* "" when not authenticated */
    const char *tls;       /* client TLS facts, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384" */
    const char *envid;     /* RFC 3461 ENVID (xtext as given) */
    enum queue_ret ret;    /* RFC 3461 RET */
    unsigned flags;        /* QUEUE_F_* */
    uint64_t size;         /* output only: body bytes */
};

struct queue_rcpt_in {
    const char *addr;  /* forward-path without <> */
    const char *orcpt; /* RFC 3461 ORCPT as given ("rfc822;a@b"), or NULL */
    unsigned notify;   /* QUEUE_NOTIFY_* */
};

/* The outcome of one delivery attempt, as kept with the recipient. */
struct queue_result {
    int smtp_code;        /* the remote reply code, 0 if none (no connection) */
    const char *dsn;      /* enhanced status code, "4.4.1" */
    const char *text;     /* the remote reply or a local reason */
    const char *mx;       /* MX host tried */
    const char *ip;       /* address tried */
    const char *tls;      /* TLS facts of the session, "" if none */
    const char *sts_mode; /* MTA-STS mode that applied: "enforce", "testing", "none", "" */
    const char *sts_id;   /* the policy id that applied, "" if none */
    int64_t when_ms;      /* 0 on input: the queue's clock */
};

enum queue_rcpt_state {
    QUEUE_RCPT_QUEUED = 0,    /* waiting for its first attempt */
    QUEUE_RCPT_ACTIVE = 1,    /* leased to a delivery (a lease left by a stopped
                                 process shows until the next read-write open) */
    QUEUE_RCPT_DEFERRED = 2,  /* waiting for a retry */
    QUEUE_RCPT_HELD = 3,      /* kept aside until released */
    QUEUE_RCPT_DELIVERED = 4, /* final: the remote said 250 */
    QUEUE_RCPT_BOUNCED = 5,   /* final: failed permanently or expired */
};

/* "queued", "active", ...; "unknown" for other values. */
const char *queue_rcpt_state_name(int state);

/* Results kept per recipient: the last and the ones before it. */
#define QUEUE_HISTORY_MAX 10

/* A recipient as stored. */
struct queue_rcpt {
    uint32_t index;
    const char *addr;
    const char *orcpt;
    unsigned notify;
    enum queue_rcpt_state state;
    uint32_t attempts;
    int64_t next_ms; /* next attempt (QUEUED/DEFERRED), lease end (ACTIVE, and HELD
                        while the attempt that was in flight has not reported), else 0 */
    bool has_result; /* false until the first attempt reports */
    struct queue_result last;
    /* The results before last, oldest first: at most QUEUE_HISTORY_MAX - 1
     * (older ones are dropped), reply texts cut to 512 bytes. Records
     * written before the history existed have none. */
    size_t n_history;
    struct queue_result *history;
};

/* A message as stored (without its body). */
struct queue_message {
    char id[QUEUE_ID_LEN + 1];
    struct queue_envelope env;
    size_t n_rcpts;
    struct queue_rcpt *rcpts;
};

/* ---- requests (loop thread; callback on the loop thread) ------------------- */

/* status is 0 or a negative enum err. */
typedef void (*queue_done_cb)(void *arg, int status);
/* On success id is the new message's ID (valid during the call only). */
typedef void (*queue_submit_cb)(void *arg, int status, const char *id);

/*
 * Store a message. The envelope and recipients are copied before the call
 * returns; the body is NOT copied: it must stay valid and unchanged until cb
 * runs. cb runs after the transaction holding the message is synced to disk;
 * only then may the client be told 250. Errors returned at once: ERR_INVAL
 * (no recipients, a NULL address, NUL in a string), ERR_TOOBIG (body over
 * message_size_limit, or more than 100000 recipients), ERR_CLOSED, ERR_PERM
 * (read-only). Errors through cb: ERR_FULL, ERR_IO, ERR_CORRUPT.
 */
int queue_submit(struct queue *q, const struct queue_envelope *env,
                 const struct queue_rcpt_in *rcpts, size_t n_rcpts, const void *body,
                 size_t body_len, queue_submit_cb cb, void *arg);

/*
 * Staged submission: a message whose body arrives in pieces too large to
 * hold (a session streaming a big DATA). Memory stays bounded by about one
 * chunk plus what the caller lets pile up at the writer.
 *
 *   queue_stage_open()    a stage; nothing is written yet.
 *   queue_stage_append()  body bytes, copied. Each full QUEUE_CHUNK goes to
 *                         the writer at once and is written under the
 *                         message's final ID in the writer's next group
 *                         commit, together with a marker saying the body is
 *                         unfinished. Those commits are what the loop waits
 *                         for, never a sync of its own.
 *   queue_stage_commit()  the envelope, recipients and prefix (header fields
 *                         added at acceptance, stored in front of the body):
 *                         the record is written, the marker removed, the
 *                         transaction synced, then cb (the commit point: a
 *                         250 may follow). Consumes the stage.
 *   queue_stage_abort()   the message will not come: what was stored is
 *                         removed. Consumes the stage.
 * Until the commit no reader sees the message. A crash leaves a marker: the
 * next read-write queue_open() removes the chunks it names.
 *
 * on_progress (may be NULL) runs on the loop thread each time one of the
 * stage's chunks is committed (or failed), until commit or abort, so a
 * caller that stopped reading its input can look at queue_stage_backlog()
 * again. Loop thread only, like every request function. Every stage is to
 * be committed or aborted before queue_close() (one left open keeps its
 * marker, and the next open removes its chunks).
 */
struct queue_stage;

/* 0 with *out, or ERR_PERM (read-only), ERR_CLOSED, ERR_NOMEM. */
int queue_stage_open(struct queue *q, void (*on_progress)(void *arg), void *arg,
                     struct queue_stage **out);
/* Append n body bytes. 0, or ERR_TOOBIG (past message_size_limit), or a
 * write error of an earlier chunk (ERR_FULL, ERR_IO, ...): then only
 * abort (or a commit, which fails) remains. */
int queue_stage_append(struct queue_stage *st, const void *p, size_t n);
/* Bytes appended and not yet committed (held or at the writer). */
size_t queue_stage_backlog(const struct queue_stage *st);
/*
 * Store the message: as queue_submit() with the body made of prefix (at
 * most QUEUE_CHUNK bytes, copied) followed by everything appended. Errors
 * at once (then cb is never called): ERR_INVAL, ERR_TOOBIG, ERR_CLOSED, or
 * the stage's earlier write error. Through cb: ERR_FULL, ERR_IO. Whatever
 * the outcome, the stage is consumed, and on failure its chunks are
 * removed.
 */
int queue_stage_commit(struct queue_stage *st, const struct queue_envelope *env,
                       const struct queue_rcpt_in *rcpts, size_t n_rcpts, const void *prefix,
                       size_t prefix_len, queue_submit_cb cb, void *arg);
/* Give up on the stage (NULL does nothing). */
void queue_stage_abort(struct queue_stage *st);

/* One leased recipient, with what the delivery engine needs to route it. */
struct queue_due {
    char id[QUEUE_ID_LEN + 1];
    uint32_t rcpt;
    const char *addr;
    const char *sender;
    uint32_t attempts; /* attempts so far */
    int64_t arrival_ms;
    uint64_t size;
    unsigned flags; /* QUEUE_F_* of the message */
    bool expired;   /* its lifetime is over: make the DSN, then queue_bounce() */
};

/* due is an array of n; owned by the callee: free it with queue_due_free(). */
typedef void (*queue_lease_cb)(void *arg, int status, struct queue_due *due, size_t n);

/*
 * Take up to max due recipients (next attempt time <= now, oldest first) and
 * lease them: they become ACTIVE until lease_time has passed, after which
 * they are due again if nobody reported on them. A recipient whose lifetime
 * (maximal_lifetime, or bounce_lifetime for a null-sender message, from
 * arrival) has run out is leased with expired set; it is not to be tried
 * again. n may be 0. A due recipient whose records do not decode is logged
 * and taken off the schedule (it stays visible to queue_list and can be
 * removed), so one damaged message never stops delivery of the others.
 * ERR_INVAL at once for max over 100000.
 */
int queue_lease(struct queue *q, size_t max, queue_lease_cb cb, void *arg);
void queue_due_free(struct queue_due *due);

/*
 * Report on a leased (or any non-final) recipient. The result is kept as the
 * recipient's last result (result may be NULL for none).
 *  delivered: final; only after the remote 250 for this recipient.
 *  defer:     attempts + 1; next attempt after an exponential backoff between
 *             minimal_backoff and maximal_backoff with jitter, but no later
 *             than the end of its lifetime (it is then leased as expired).
 *  bounce:    final; failed permanently (or expired).
 *  unlease:   give the lease back without an attempt: due again now.
 * When a message has no non-final recipient left it is removed in the same
 * transaction (read what a DSN needs before the last report). ERR_NOTFOUND
 * through cb for an unknown message or recipient; ERR_INVAL through cb for a
 * recipient that is already final.
 */
int queue_delivered(struct queue *q, const char *id, uint32_t rcpt,
                    const struct queue_result *result, queue_done_cb cb, void *arg);
int queue_defer(struct queue *q, const char *id, uint32_t rcpt, const struct queue_result *result,
                queue_done_cb cb, void *arg);
int queue_bounce(struct queue *q, const char *id, uint32_t rcpt, const struct queue_result *result,
                 queue_done_cb cb, void *arg);
int queue_unlease(struct queue *q, const char *id, uint32_t rcpt, queue_done_cb cb, void *arg);
/*
 * Give a lease back without an attempt, due again at when_ms (now if that
 * has passed): for recipients the engine chooses not to try yet (delivery
 * to their domain is paused). The attempt count and last result stay.
 * Same errors as queue_unlease.
 */
int queue_postpone(struct queue *q, const char *id, uint32_t rcpt, int64_t when_ms,
                   queue_done_cb cb, void *arg);

/*
 * Operator requests on a whole message (every non-final recipient):
 *  hold:      HELD; off the schedule (a held recipient does not expire).
 *             A recipient held while ACTIVE keeps its lease end in next_ms
 *             (its attempt goes on and reports as usual; a deferral leaves
 *             it HELD with next_ms 0, as does a read-write open after a
 *             crash).
 *  release:   HELD back to DEFERRED (QUEUED if never tried), due now; a
 *             recipient held in flight whose lease has not ended becomes
 *             ACTIVE again instead, so it is never leased twice.
 *  retry:     QUEUED/DEFERRED due now. id NULL: every message.
 *  remove:    the message, its body and recipients are deleted (also a
 *             message whose records no longer decode).
 * ERR_NOTFOUND through cb for an unknown ID.
 */
int queue_hold(struct queue *q, const char *id, queue_done_cb cb, void *arg);
int queue_release(struct queue *q, const char *id, queue_done_cb cb, void *arg);
int queue_retry(struct queue *q, const char *id, queue_done_cb cb, void *arg);
int queue_remove(struct queue *q, const char *id, queue_done_cb cb, void *arg);
/*
 * Record that the sender of message id got its delay warning: sets
 * QUEUE_F_DELAY_WARNED in the message's flags (durable after the commit,
 * so a restart does not warn again). Recipients and schedule are not
 * touched. ERR_NOTFOUND through cb for an unknown ID.
 */
int queue_delay_warned(struct queue *q, const char *id, queue_done_cb cb, void *arg);

/* ---- reads (any thread, synchronous) --------------------------------------- */

/*
 * Call cb for every message in ID order (oldest first), starting after the
 * ID after (NULL or "" from the start). m is valid during the call only. cb
 * returns 0 to go on, anything else to stop (queue_list then returns that
 * value). A record that does not decode is skipped and counted: the return
 * is then ERR_CORRUPT after the walk.
 */
typedef int (*queue_list_cb)(void *arg, const struct queue_message *m);
int queue_list(struct queue *q, const char *after, queue_list_cb cb, void *arg);

/* Read one message's envelope and recipients. Free with queue_message_free()
 * (NULL is fine). ERR_NOTFOUND, ERR_CORRUPT, ERR_NOMEM. */
int queue_message_read(struct queue *q, const char *id, struct queue_message **out);
void queue_message_free(struct queue_message *m);

/* Copy up to cap bytes of the body starting at offset into dst; *got is the
 * number copied (0 at or past the end). ERR_NOTFOUND, ERR_CORRUPT. */
int queue_body_read(struct queue *q, const char *id, uint64_t offset, void *dst, size_t cap,
                    size_t *got);

struct queue_stats {
    uint64_t messages;
    uint64_t rcpts[6]; /* by enum queue_rcpt_state */
    uint64_t map_size; /* bytes mapped */
    uint64_t map_used; /* bytes in use by the last committed state */
    uint64_t commits;  /* write transactions committed by this opener */
    uint64_t chunks;   /* body chunks stored (of messages and unfinished stages) */
    uint64_t stages;   /* unfinished staged bodies */
};
int queue_stats(struct queue *q, struct queue_stats *out);

/* The earliest next attempt time on the schedule, in ms; ERR_NOTFOUND when
 * the schedule is empty. For the scheduler's timer. */
int queue_next_due(struct queue *q, int64_t *when_ms);

/* Is s a well-formed queue ID (length and alphabet)? */
bool queue_id_valid(const char *s);

#endif
