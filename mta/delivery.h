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

#include <stddef.h>

#include "base.h"

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

#endif
