/*
 * shared.h - the state several convoyd share through Redis (shared_state):
 * the fleet (which nodes were seen in the last minute), destination rate
 * limits as token buckets in Redis, and a cache of MTA-STS policy texts.
 *
 * The client is Debian's hiredis (0.14) with its libuv adapter, on the
 * daemon's loop. hiredis 0.14 has no TLS: for rediss:// it connects to
 * the private unix socket of tls_bridge.h, which relays to Redis over TLS. Redis is never on a
 * message's critical path for safety: every request has a bounded time (SHARED_TIMEOUT_MS); a
 * request that times out, or any error on the connection, takes the connection down (state
 * SHARED_DOWN), fails every request in flight with a negative enum err, and reconnects with a
 * backoff (SHARED_BACKOFF_MIN_MS doubling to SHARED_BACKOFF_MAX_MS). The caller falls back to its
 * local share of each limit while the state is down (shared_fallback_share()). One log line when
 * Redis goes away, one when it is back.
 *
 * Keys (all under "convoy:"): convoy:nodes (a sorted set of node names
 * scored by their last heartbeat, ms), convoy:rate:DEST (a hash: tokens,
 * ts), convoy:conc:DEST (connection leases: node:n scored by expiry ms),
 * convoy:sts:DOMAIN ID (a policy text with the policy's max_age as TTL),
 * convoy:tlsrpt:... (TLS-RPT across the fleet: each node's record per day
 * and policy domain, the report's lock, sent marker and number; tlsrpt.c).
 *
 * Threads: loop thread only. Callbacks never run before the call that
 * registered them returns.
 */
#ifndef CONVOY_SHARED_H
#define CONVOY_SHARED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"

struct json_t;
struct shared;

#define SHARED_TIMEOUT_MS 250
#define SHARED_CONNECT_TIMEOUT_MS 1000
#define SHARED_BACKOFF_MIN_MS 250
#define SHARED_BACKOFF_MAX_MS 4000
#define SHARED_HEARTBEAT_MS 5000
/* A node counts as part of the fleet when seen within this time. */
#define SHARED_FLEET_WINDOW_MS 60000
#define SHARED_FLEET_MAX 64

/* ---- the URL (pure) ----------------------------------------------------------------- */

enum shared_url_kind { SHARED_URL_TCP, SHARED_URL_UNIX };

struct shared_url {
    enum shared_url_kind kind;
    char host[256]; /* TCP: a name or an address (brackets removed) */
    uint16_t port;  /* TCP: default 6379 */
    bool tls;       /* TCP: rediss:// (TLS to HOST:PORT, verified for HOST) */
    char path[108]; /* UNIX: the socket's path */
    unsigned db;    /* SELECT db (/DB for TCP, ?db=N for unix:) */
    char user[128]; /* redis://USER:PASSWORD@ (AUTH) */
    char password[256];
    char shown[512]; /* the URL without its password, for logs and status */
};

/*
 * Parse shared_state: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],
 * rediss://... (the same over TLS), unix:/path[?db=N]. 0; ERR_INVAL with
 * a reason in err for a malformed URL.
 */
int shared_url_parse(const char *s, struct shared_url *u, struct buf *err);

/* ---- pure helpers of the rate limit ---------------------------------------------------- */

/*
 * How many tokens to ask for in one grant: at least 1, at most the jobs
 * waiting, and never more than a tenth of a second's worth of the rate
 * (so a node does not hoard the fleet's budget), at most 64.
 */
unsigned shared_batch(size_t waiting, double rate_per_s);

/*
 * The local share of a limit while Redis is away: configured (0 < share
 * <= 1) wins; otherwise 1/fleet (fleet 0 counts as 1).
 */
double shared_share(double configured, unsigned fleet);

/* ---- the client ---------------------------------------------------------------------- */

enum shared_state { SHARED_DOWN, SHARED_CONNECTING, SHARED_UP };

struct shared_options {
    uv_loop_t *loop;       /* required */
    const char *url;       /* required: shared_state */
    const char *node;      /* required: shared_state_node (or myhostname) */
    double fallback_share; /* shared_state_fallback_share; 0: 1/N */
    uint32_t timeout_ms;   /* 0: SHARED_TIMEOUT_MS */
    uint32_t heartbeat_ms; /* 0: SHARED_HEARTBEAT_MS */
    /* rediss:// only (tls_bridge.h): the directory of the private unix
     * socket hiredis connects to (required: queue_directory/shared-tls),
     * and the trusted roots (shared_state_tls_CAfile; NULL or "": the
     * system trust store). */
    const char *tls_dir;
    const char *ca_file;
};

/* rediss://: the directory under queue_directory for the TLS socket. */
#define SHARED_TLS_DIR "shared-tls"
#define SHARED_TLS_SOCKET_PATH_MAX 108 /* sun_path, NUL included */

/*
 * Start: parse the URL (errors as shared_url_parse()), for rediss:// start
 * the TLS bridge (its errors: a bad CA file, the socket), and begin
 * connecting. Not being able to reach Redis is not an error: the state
 * stays down and the client keeps trying; nor is a TLS failure (a
 * certificate that does not verify): it is the last error in the status.
 */
int shared_new(const struct shared_options *o, struct shared **out, struct buf *err);
/*
 * Close: every request in flight calls back with ERR_CLOSED before this
 * returns; the object frees itself once its handles are closed (run the
 * loop). NULL does nothing.
 */
void shared_close(struct shared *s);

enum shared_state shared_state(const struct shared *s);
bool shared_up(const struct shared *s);
/* Nodes seen within SHARED_FLEET_WINDOW_MS at the last heartbeat (>= 1). */
unsigned shared_fleet_size(const struct shared *s);
/* The local share of every limit while Redis is away (shared_share()). */
double shared_fallback_share(const struct shared *s);
/* Add "shared_state": {url, node, state, rtt_ms, rtt_avg_ms, rtt_max_ms,
 * since, fallback_share, fleet: [{node, seen, seen_ago}], fleet_size,
 * leases, tls (bool), tls_version and tls_cipher (rediss://, once a
 * handshake succeeded), last_error} to a status object (a json_t *). */
void shared_status(const struct shared *s, struct json_t *status);

/*
 * Take up to want tokens from the fleet's bucket of key (rate tokens a
 * second, at most burst) in one round trip. 0: cb is called once, later,
 * with status 0 and granted (0..want) and, when none was granted, wait_ms
 * until one is; or with a negative enum err (timeout, connection lost,
 * closed). Not 0 (the state is not up): cb is never called.
 */
typedef void (*shared_grant_cb)(void *arg, int status, unsigned granted, int64_t wait_ms);
int shared_rate_take(struct shared *s, const char *key, double rate, double burst, unsigned want,
                     shared_grant_cb cb, void *arg);

/*
 * Connection leases: a destination's concurrency= across the fleet is a
 * sorted set in Redis (convoy:conc:KEY) of "node:n" members scored by
 * their expiry; a lease lives SHARED_LEASE_TTL_MS and is renewed at every
 * heartbeat while held, so a node that dies frees its leases within that
 * time. shared_lease_take(): 0, and cb is called once, later, with status
 * 0 and a lease id (0: the limit is reached), or a negative enum err; not
 * 0 (the state is not up): cb is never called. shared_lease_release()
 * gives a lease back (when Redis is away it just expires); 0 does
 * nothing.
 */
#define SHARED_LEASE_TTL_MS 15000
typedef void (*shared_lease_cb)(void *arg, int status, uint64_t lease);
int shared_lease_take(struct shared *s, const char *key, unsigned limit, shared_lease_cb cb,
                      void *arg);
void shared_lease_release(struct shared *s, uint64_t lease);

/*
 * The shared policy cache: shared_get() of convoy:sts:KEY calls cb once
 * with status 0 and the value (len 0, value NULL when there is none), or
 * a negative enum err; not 0: cb is never called. shared_put() stores a
 * value for ttl_s seconds (fire and forget; nothing when down).
 */
typedef void (*shared_get_cb)(void *arg, int status, const char *value, size_t len);
int shared_get(struct shared *s, const char *key, shared_get_cb cb, void *arg);
void shared_put(struct shared *s, const char *key, const char *value, size_t len, int64_t ttl_s);

/*
 * Connections made so far (it grows each time the state goes up): a
 * caller that must redo something after every reconnect compares it.
 */
uint64_t shared_generation(const struct shared *s);
/* This node's name in the fleet (shared_state_node). */
const char *shared_node(const struct shared *s);

/* ---- TLS-RPT across the fleet (tlsrpt.c) ---------------------------------------------- */

/*
 * Each node's record of a (day, policy domain), absolute (never an
 * increment), lives in convoy:tlsrpt:DAY:DOMAIN (a hash, field = node)
 * for SHARED_TLSRPT_TTL_S. shared_tlsrpt_publish() writes this node's
 * (fire and forget; nothing when down): writing it again counts nothing
 * twice.
 */
#define SHARED_TLSRPT_TTL_S (4 * 86400)
#define SHARED_TLSRPT_LOCK_MS (10 * 60 * 1000)
void shared_tlsrpt_publish(struct shared *s, const char *day, const char *domain, const char *rec,
                           size_t len);

/*
 * Claim the report of (day, domain). full (a finished day): SENT when the
 * fleet sent it (who: its report-id), BUSY while another node holds the
 * lock (who: that node), else OURS with the lock taken for
 * SHARED_TLSRPT_LOCK_MS. Not full (a partial report): always OURS. OURS
 * comes with seq, the fleet's next report number of (day, domain), never
 * below min_seq. 0: cb is called once, later (status 0, or a negative
 * enum err and nothing claimed); not 0 (the state is not up): never.
 */
enum shared_claim { SHARED_CLAIM_OURS, SHARED_CLAIM_SENT, SHARED_CLAIM_BUSY };
typedef void (*shared_claim_cb)(void *arg, int status, enum shared_claim what, uint32_t seq,
                                const char *who);
int shared_tlsrpt_claim(struct shared *s, const char *day, const char *domain, bool full,
                        uint32_t min_seq, shared_claim_cb cb, void *arg);

/* Every node's record of (day, domain): cb once, later, with n records
 * (nodes[i] published recs[i], lens[i] bytes; valid during the call), or
 * a negative enum err. Not 0: cb is never called. */
typedef void (*shared_records_cb)(void *arg, int status, size_t n, const char *const *nodes,
                                  const char *const *recs, const size_t *lens);
int shared_tlsrpt_records(struct shared *s, const char *day, const char *domain,
                          shared_records_cb cb, void *arg);

/* The full report of (day, domain) went out: set the sent marker (for
 * SHARED_TLSRPT_TTL_S) and free the lock. Fire and forget. */
void shared_tlsrpt_sent(struct shared *s, const char *day, const char *domain,
                        const char *report_id);

#endif
