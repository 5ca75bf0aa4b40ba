/*
 * delivery.h - the delivery engine as its owner (the daemon, mta/) sees it:
 * create it after the queue is open, stop it on shutdown, wait while it is
 * active, then close it.
 *
 * The engine (delivery/) leases due recipients from the queue, groups them
 * by destination domain (or sends everything to relayhost), resolves MX
 * hosts, and runs SMTP client sessions within the limits of the
 * configuration. Each recipient ends delivered, deferred or bounced (a DSN
 * to the sender) as the verdict (verdict.h) says; each attempt is one
 * Postfix-shaped log line.
 *
 * The engine knows nothing of the daemon: what it needs (loop, snapshot,
 * queue, how the snapshot maps onto the resolver's and the MTA-STS engine's
 * options, the EHLO name, a clock) comes in struct delivery_options. The
 * owner tells it about new work with delivery_kick().
 *
 * Threads: loop thread only.
 */
#ifndef CONVOY_DELIVERY_H
#define CONVOY_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"

struct conf;
struct dns_options;
struct json_t;
struct policy_options;
struct queue;
struct shared;
struct delivery;

struct delivery_options {
    uv_loop_t *loop;     /* required */
    struct conf *conf;   /* required: the snapshot (the engine takes a reference) */
    struct queue *queue; /* required: open; must outlive delivery_close() */
    /* The snapshot mapped onto what the engine starts, called at start and
     * on each reload (required): the name in EHLO and DSNs, the resolver's
     * options, the MTA-STS engine's options (the engine sets cache_path to
     * <queue_directory>/sts.lmdb). */
    void (*helo_name)(const struct conf *c, char *out, size_t size);
    void (*dns_options)(const struct conf *c, struct dns_options *o);
    void (*policy_options)(const struct conf *c, struct policy_options *o);
    /* The wall clock in ms (NULL: the real one). Tests use a fake clock, as
     * the queue's clock_ms does; timers still run on the loop's time. */
    int64_t (*clock_ms)(void *arg);
    void *clock_arg;
    /* How often cached MTA-STS policies are checked for a refresh (RFC
     * 8461 5.1 / 10.2); 0: every 60 s. */
    uint32_t sts_refresh_tick_ms;
    /* The TLS-RPT store (policy.h) sessions are counted in; NULL: none.
     * Owned by the caller; it must outlive delivery_close(). */
    struct tlsrpt_store *tlsrpt;
    /* shared_state (shared/shared.h), or NULL: one node, every limit local.
     * Owned by the caller; close it after delivery_close() (the engine's
     * requests in flight then call back and it frees itself). */
    struct shared *shared;
};

/*
 * Create the engine and start delivering from o->queue. 0 with *out set, or
 * a negative enum err with one line in err (e.g. the DNS resolver could not
 * start); then *out is NULL. Pauses saved in <queue_directory>/pauses are
 * in force before the first lease.
 */
int delivery_new(const struct delivery_options *o, struct delivery **out, struct buf *err);
/* Stop taking new work; sessions in progress finish their message, idle
 * cached sessions say QUIT. NULL does nothing. */
void delivery_stop(struct delivery *dl);
/* Sessions open, queue reports and pause-table writes not yet done. 0 for
 * NULL. */
size_t delivery_active(const struct delivery *dl);
/* Drop everything now: sessions are closed (their unfinished recipients are
 * deferred, or given back to the queue when not yet tried), resolvers and
 * timers closed. Call before the queue is closed; run the loop afterwards:
 * the engine frees itself once its handles are closed and its requests have
 * called back. The caller forgets dl. NULL does nothing. */
void delivery_close(struct delivery *dl);
/* New work is due (the queue committed a submission, release or retry). */
void delivery_kick(struct delivery *dl);

/*
 * SIGHUP / convoyctl reload, in two steps so the daemon can check every
 * part before any part changes: delivery_reload_prepare() reads and checks
 * what snapshot c needs (tls_policy_file, the trust store for MX hosts and
 * for MTA-STS policy hosts) and changes nothing: on an error ("FILE:LINE:
 * reason" or "parameter: reason" lines appended to err) the reload must be
 * refused; on success *u (NULL when delivery is not running) goes to
 * delivery_reload_apply(), which cannot fail, or to
 * delivery_reload_cancel(). Applied: new connections use the new TLS
 * context, limits and timeouts; the MTA-STS engine takes the new sts_*
 * settings and trust store in place (cached policies, lookups and fetches
 * in flight are kept: those finish under the settings they started with).
 * relayhost takes effect at the next restart. delivery_reload() does both
 * steps. dl may be NULL (nothing to do).
 */
struct delivery_update;
int delivery_reload_prepare(struct delivery *dl, struct conf *c, struct delivery_update **u,
                            struct buf *err);
void delivery_reload_apply(struct delivery *dl, struct delivery_update *u);
void delivery_reload_cancel(struct delivery_update *u);
int delivery_reload(struct delivery *dl, struct conf *c, struct buf *err);

/* Add "sts": {policy_cache_size, overrides, testing_failures,
 * enforce_failures, rechecks} to a status object (a json_t *). */
void delivery_sts_status(struct delivery *dl, struct json_t *status);

/* ---- operator requests ------------------------------------------------------ */

/* n: recipients bounced. status 0 or a negative enum err. */
typedef void (*delivery_admin_cb)(void *arg, int status, size_t n);

/*
 * Bounce message id now: a DSN (RFC 3464, Action: failed, Status: 5.0.0,
 * "bounced by the mail administrator: REASON") is built on the one DSN path
 * (dsn.c) as an expiry bounce is, queued to the sender, and only after it
 * is committed are the recipients marked bounced. Queued, deferred and held
 * recipients are bounced; recipients in flight are left to their attempt.
 * No DSN for the null sender or when NOTIFY excludes FAILURE. Returns 0 and
 * calls cb exactly once later; or an error and never calls cb:
 * ERR_NOTFOUND (no such message), ERR_AGAIN (every open recipient is in
 * flight), ERR_NOMEM, ERR_CORRUPT, ERR_CLOSED (also for dl NULL).
 */
int delivery_admin_bounce(struct delivery *dl, const char *id, const char *reason,
                          delivery_admin_cb cb, void *arg);

/* Called once a change of the pause table is on disk: status 0; or an
 * error with why (the change is in force, but would not survive a restart
 * of convoyd). */
typedef void (*delivery_pause_cb)(void *arg, int status, const char *why);

/* May s name a paused domain: 1..255 bytes, no spaces or control
 * characters, not "*", not starting with '#'? */
bool delivery_pause_domain_ok(const char *s);

/*
 * Pause new delivery attempts to domain (NULL or "": to everything) until
 * until_ms (0: until resumed), with a reason shown in status. Pausing again
 * replaces the entry. Sessions in progress finish; waiting mail stays in the
 * queue. The table is kept in <queue_directory>/pauses, rewritten
 * atomically on each change and read when delivery starts, so a pause holds
 * across reload, restart and crash. Returns 0 and calls cb (may be NULL)
 * once the file is written; or ERR_TOOBIG (too many pauses), ERR_INVAL (a
 * domain with spaces or control characters, or "*"), ERR_NOMEM,
 * ERR_CLOSED (dl NULL or closing), and never calls cb. The change is in
 * force when this returns.
 */
int delivery_pause(struct delivery *dl, const char *domain, int64_t until_ms, const char *reason,
                   delivery_pause_cb cb, void *arg);
/* Resume domain (NULL: every pause, of everything and of each domain);
 * *n_resumed says how many pauses ended. Mail of a resumed domain is due
 * now. 0 (cb as for delivery_pause()) or ERR_NOMEM, ERR_CLOSED (cb not
 * called). */
int delivery_resume(struct delivery *dl, const char *domain, size_t *n_resumed,
                    delivery_pause_cb cb, void *arg);
/* Add "paused": [{domain, reason, since, until, remaining}] to a status
 * object (a json_t *); an empty array for dl NULL. */
void delivery_pause_status(struct delivery *dl, struct json_t *status);

/* Add "dead": [{destination, since, until, failures, probing, queued}]
 * (times in seconds since the epoch) to a status object (a json_t *): the
 * destinations marked dead (smtp_destination_dead_threshold). */
void delivery_route_status(struct delivery *dl, struct json_t *status);

#endif
