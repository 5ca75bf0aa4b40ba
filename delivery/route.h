/*
 * route.h - private to the delivery engine: routing (transport_maps), the
 * per-destination limits (destination_limits), the concurrency window and
 * dead destinations. The pure parts (window, token bucket, deadness) take
 * the time as an argument so that the unit tests drive them with a fake
 * clock; route.c joins them to the engine.
 */
#ifndef CONVOY_ROUTE_H
#define CONVOY_ROUTE_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"

struct delivery;
struct dest;
struct job;
struct queue_due;

/* ---- destlimit.c: pure ------------------------------------------------------------ */

/*
 * The concurrency window of a destination, as Postfix's qmgr keeps it:
 * it starts at initial_destination_concurrency, grows by one after each
 * successful delivery up to the limit, and shrinks by one (never below 1)
 * after each attempt that reached no address.
 */
struct conc_window {
    unsigned cur;
    unsigned limit;
};
void window_init(struct conc_window *w, unsigned initial, unsigned limit);
/* A new limit (reload): cur is cut down to it. */
void window_set_limit(struct conc_window *w, unsigned limit);
void window_success(struct conc_window *w);
void window_failure(struct conc_window *w);

/*
 * A token bucket of messages: rate tokens a second, at most burst of them
 * (burst >= 1). Starts full.
 */
struct token_bucket {
    double rate;
    double burst;
    double tokens;
    int64_t last_ms;
};
void bucket_init(struct token_bucket *b, double rate, int64_t now_ms);
/* Take one token at now_ms: true, or false with *wait_ms the time until
 * one is there. */
bool bucket_take(struct token_bucket *b, int64_t now_ms, int64_t *wait_ms);

/*
 * Deadness: after threshold consecutive failed attempts (no address gave a
 * usable session) the destination is dead until now + dead_ms; then one
 * probe at a time may connect; a failed probe makes it dead for another
 * dead_ms, a session that becomes ready revives it.
 */
enum dead_state { DEST_ALIVE, DEST_DEAD, DEST_PROBE };
struct deadness {
    unsigned fails; /* consecutive failed attempts */
    bool dead;
    int64_t until_ms; /* dead: no connection before this */
    int64_t since_ms; /* dead: when it was marked */
    bool probing;     /* a probe connection is open */
};
/* An attempt failed: true when the destination just became dead. */
bool dead_failure(struct deadness *x, unsigned threshold, int64_t now_ms, int64_t dead_ms);
/* A session became ready: true when the destination was dead (revived). */
bool dead_success(struct deadness *x);
/* What may be done now: ALIVE (connect freely), DEAD (defer, do not
 * connect), PROBE (one connection may test it). */
enum dead_state dead_state(const struct deadness *x, int64_t now_ms);

/* ---- route.c: the engine's side ------------------------------------------------- */

/* Load transport_maps and destination_limits of the engine's snapshot
 * (delivery_new()). A bad line is FILE:LINE: reason in err. 0 or ERR_INVAL. */
int route_load(const struct conf *c, struct conf_map **transport, struct conf_map **limits,
               struct buf *err);

/*
 * Route a leased recipient (sched_file()): an error: or defer: entry ends
 * it here (returns true: taken); otherwise name (size 256) is set to the
 * destination's key: the recipient domain, "[relayhost]", or
 * "transport:[host]:port" for a transport next hop.
 */
bool route_recipient(struct delivery *dl, const struct queue_due *due, char *name, size_t size);
/* End the recipients route_recipient() took (error: and defer:), one job
 * (one DSN) per message and entry. Called once the lease is filed, before
 * anything can change the tables. */
void route_flush(struct delivery *dl);
/* A new destination of that name: its next hop, limits and window. */
void route_dest_init(struct dest *d);
/* Most recipients in one transaction for a recipient domain. */
size_t route_rcpt_limit(const struct delivery *dl, const char *domain);
/* The TCP port of a destination's hosts. */
uint16_t route_port(const struct dest *d);

/* dest_run(): may another connection be opened now? Also defers the
 * waiting jobs of a dead destination. */
bool route_may_connect(struct dest *d);
/* May a job start now (the destination's message rate)? false arranges a
 * later dest_run(). */
bool route_may_send(struct dest *d);
/* A connection's attempt reached no usable session / one became ready /
 * a message was delivered. */
void route_conn_failed(struct dest *d, const char *why);
/* End of dest_run(): a fleet lease taken for a connection that was not
 * needed after all (no mail left) is given back. */
void route_ran(struct dest *d);
/* A connection is gone: its fleet lease (shared_state) is given back. */
struct conn;
void route_conn_closed(struct conn *cn);
void route_conn_ready(struct dest *d);
void route_delivered(struct dest *d);
/* A reload applied new tables: limits of existing destinations follow. */
void route_reloaded(struct delivery *dl);
/* Add "dead": [{destination, since, until, failures}] and
 * "destinations": [...] window facts to a status object (a json_t *). */
void route_status(struct delivery *dl, void *status);

#endif
