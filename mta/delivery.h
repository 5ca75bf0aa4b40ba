/*
 * delivery.h - the delivery engine as the daemon sees it: start it after the
 * queue is open, stop it on shutdown, wait while it is active, then close.
 *
 * The engine (mta/deliver.c) leases due recipients from the queue, groups
 * them by destination domain (or sends everything to relayhost), resolves
 * MX hosts, and runs SMTP client sessions within the limits of the
 * configuration. Each recipient ends delivered, deferred or bounced (a DSN
 * to the sender); each attempt is one Postfix-shaped log line.
 *
 * Threads: loop thread only. delivery_start() sets m->on_new_work, so new
 * mail is picked up as soon as the queue has committed it.
 */
#ifndef CONVOY_DELIVERY_H
#define CONVOY_DELIVERY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base.h"

struct conf;
struct json_t;
struct mta;

/* Start delivering from m->queue with m->conf. 0, or a negative enum err
 * with one line in err (e.g. the DNS resolver could not start). */
int delivery_start(struct mta *m, struct buf *err);
/* Stop taking new work; sessions in progress finish their message, idle
 * cached sessions say QUIT. */
void delivery_stop(struct mta *m);
/* Sessions open plus queue reports not yet committed. */
size_t delivery_active(const struct mta *m);
/* Drop everything now: sessions are closed (their unfinished recipients are
 * deferred, or given back to the queue when not yet tried), resolvers and
 * timers closed. Call before the queue is closed; run the loop afterwards so
 * the handles are released. */
void delivery_close(struct mta *m);
/* New work is due (the queue committed a submission, release or retry). */
void delivery_kick(struct mta *m);
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
 * steps.
 */
struct delivery_update;
int delivery_reload_prepare(struct mta *m, struct conf *c, struct delivery_update **u,
                            struct buf *err);
void delivery_reload_apply(struct mta *m, struct delivery_update *u);
void delivery_reload_cancel(struct delivery_update *u);
int delivery_reload(struct mta *m, struct conf *c, struct buf *err);

/* ---- operator requests (mta/deliver_admin.c) -------------------------------- */

/* n: recipients bounced. status 0 or a negative enum err. */
typedef void (*delivery_admin_cb)(void *arg, int status, size_t n);

/*
 * Bounce message id now: a DSN (RFC 3464, Action: failed, Status: 5.0.0,
 * "bounced by the mail administrator: REASON") is built with bounce.c as an
 * expiry bounce is, queued to the sender, and only after it is committed
 * are the recipients marked bounced. Queued, deferred and held recipients
 * are bounced; recipients in flight are left to their attempt. No DSN for
 * the null sender or when NOTIFY excludes FAILURE. Returns 0 and calls cb
 * exactly once later; or an error and never calls cb: ERR_NOTFOUND (no such
 * message), ERR_AGAIN (every open recipient is in flight), ERR_NOMEM,
 * ERR_CORRUPT, ERR_CLOSED.
 */
int delivery_admin_bounce(struct mta *m, const char *id, const char *reason, delivery_admin_cb cb,
                          void *arg);

/* Called once a change of the pause table is on disk: status 0; or an
 * error with why (the change is in force, but would not survive a restart
 * of convoyd). */
typedef void (*delivery_pause_cb)(void *arg, int status, const char *why);

/*
 * Pause new delivery attempts to domain (NULL or "": to everything) until
 * until_ms (0: until resumed), with a reason shown in status. Pausing again
 * replaces the entry. Sessions in progress finish; waiting mail stays in the
 * queue. The table is kept in <queue_directory>/pauses, rewritten
 * atomically on each change and read when delivery starts, so a pause holds
 * across reload, restart and crash. Returns 0 and calls cb (may be NULL)
 * once the file is written; or ERR_TOOBIG (too many pauses), ERR_INVAL (a
 * domain with spaces or control characters, or "*"), ERR_NOMEM, and never
 * calls cb. The change is in force when this returns.
 */
int delivery_pause(struct mta *m, const char *domain, int64_t until_ms, const char *reason,
                   delivery_pause_cb cb, void *arg);
/* Resume domain (NULL: every pause, of everything and of each domain);
 * *n_resumed says how many pauses ended. Mail of a resumed domain is due
 * now. 0 (cb as for delivery_pause()) or ERR_NOMEM (cb not called). */
int delivery_resume(struct mta *m, const char *domain, size_t *n_resumed, delivery_pause_cb cb,
                    void *arg);
/* Add "paused": [{domain, reason, since, until, remaining}] to a status
 * object (a json_t *). */
void delivery_pause_status(struct mta *m, struct json_t *status);

#endif
