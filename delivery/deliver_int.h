/*
 * deliver_int.h - private to the delivery engine (the files of delivery/): the
 * engine's structures (struct delivery and what hangs off it: destinations,
 * jobs, connections, the pause table), the functions its files share, the
 * DSN builder and small helpers that the unit tests reach directly. The
 * daemon uses delivery.h only.
 */
#ifndef CONVOY_DELIVER_INT_H
#define CONVOY_DELIVER_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sys/socket.h>
#include <uv.h>

#include "base.h"
#include "conf.h"
#include "delivery.h"
#include "policy.h"
#include "queue.h"
#include "route.h"
#include "smtp.h"
#include "verdict.h"

/* ---- bounce.c: delivery status notifications (RFC 3464) ----------------- */

/* One recipient of a DSN's per-recipient part (RFC 3464 2.3). */
struct dsn_rcpt {
    const char *addr;            /* Final-Recipient (rfc822) */
    const char *orcpt;           /* RFC 3461 ORCPT as given ("rfc822;a@b"), or NULL */
    const char *action;          /* "failed" or "delayed" (RFC 3464 2.3.3) */
    const char *status;          /* "5.1.1" */
    const char *remote_mta;      /* MX host name, or NULL when none was reached */
    const char *diag;            /* the remote reply ("550 5.1.1 ..."), or NULL */
    const char *reason;          /* human text for the first part */
    int64_t last_attempt_ms;     /* 0: not given */
    int64_t will_retry_until_ms; /* delayed: when retries end (0: not given) */
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

/* Does a recipient's NOTIFY bits (QUEUE_NOTIFY_*, RFC 3461 4.1) ask for a
 * failure DSN? 0 means NOTIFY was not given: failures are reported. */
bool deliver_wants_failure_dsn(unsigned notify);

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

/* ---- the engine's structures ------------------------------------------------ */

#define COMPONENT "smtp"
#define QCOMP "qmgr"
#define LEASE_BATCH 200
#define INFLIGHT_MAX 5000    /* leased recipients held in memory at most */
#define MAX_TARGETS 64       /* addresses kept per destination */
#define RESOLVE_TTL_MS 60000 /* how long a destination's addresses are reused */
#define DSN_MAX (64u << 20)

struct delivery;
struct dest;
struct route_reject;

struct target {
    char host[256];
    struct sockaddr_storage addr;
};

/* One TLSA record of a host, owned (a copy of the DNS answer's). */
struct dane_rec {
    uint8_t usage, selector, mtype;
    uint8_t *data;
    size_t len;
};

/* What DANE found for one MX host of a destination (dane.c, RFC 7672 2.2). */
struct dane_host {
    struct dest *d;
    char host[256];      /* the MX host name as published */
    char canonical[256]; /* its CNAME target, "" when not an alias */
    enum verdict_dane state;
    char why[480];       /* "MX RRset not secure", "TLSA bogus", ... */
    char tlsa_name[300]; /* where the records were found */
    struct dane_rec *recs;
    size_t n;
    size_t usable; /* tls_dane_usable_count() */
    struct dns_query *q;
    bool at_canonical; /* the lookup in flight is at the canonical name */
};

struct jrcpt {
    uint32_t idx;
    char *addr;
    uint32_t attempts;
};

struct job {
    struct job *next;
    struct dest *dest;
    char id[QUEUE_ID_LEN + 1];
    char *sender;
    unsigned flags;
    int64_t arrival_ms;
    int64_t lease_ms;
    int64_t conn_ms;
    int64_t ready_ms;
    size_t n, cap; /* recipients in r, and room */
    struct jrcpt *r;
    /* Filled when the job starts on a connection. */
    struct queue_message *qm;
    char *body;
    size_t body_len;
    struct smtp_rcpt *srcpt;
    char (*notify)[40];
    struct smtp_msg msg;
    char relay[320]; /* where it was tried last: "host[ip]:port" or "none" */
    char mx[256];
    char ip[64];
    char tls[160];
    /* The policy that applied to the last attempt (MTA-STS or override). */
    char sts_mode[12];
    char sts_id[POLICY_ID_MAX + 1];
    char label[96];   /* "sts=enforce id=X", "tls_policy=secure", "sts=none" */
    char verdict[16]; /* "verified", "encrypted", "none" */
    char report[48];  /* testing: the RFC 8460 result type of a failure */
    char dane[128];   /* "dane=verified 3 1 1", "dane=fail no-match", "" */
};

/* Does the job's message say TLS-Required: No (RFC 8689)? */
#define JOB_TLS_OPTIONAL(j) (((j)->flags & QUEUE_F_TLS_OPTIONAL) != 0)

struct conn {
    struct conn *next;                /* in the destination's idle list */
    struct conn *all_prev, *all_next; /* every connection of the engine */
    struct dest *dest;
    struct smtp_client *c;
    struct job *job;
    size_t target;
    size_t tried;
    bool plain_retry;
    bool idle;
    unsigned msgs_before;
    enum smtp_tls_mode mode;
    int64_t idle_since;
    uint64_t lease; /* shared_state connection lease (route.c), 0: none */
    struct smtp_outcome last;
    char last_relay[320];
    /* The policy of the current target (RFC 8461 4 and 5, or an override). */
    struct policy_tls_req req;
    bool have_ov;
    struct policy_override ov; /* a copy: a reload may free the table */
    bool have_sts_fail;        /* a host failed the policy in this attempt */
    struct smtp_outcome sts_fail;
    char report[48]; /* testing: result type of the failure seen, or "" */
    char report_text[256];
    /* TLS-Required: No (RFC 8689): the session ignores MTA-STS, carries
     * only such messages and is not counted for TLS-RPT. */
    bool tls_optional;
    /* The RFC 8460 result type of the policy's failure or report on the
     * current target (tlsrpt.c), else VERDICT_RT_NONE. */
    int rt;
    bool rpt_done; /* the session was counted for TLS-RPT */
    /* DANE for the current target (dane.c): what applies, the match made
     * after the handshake, the log label. */
    enum verdict_dane dane;
    bool dane_matched;
    struct tls_dane_result dane_res;
    char dane_label[128];
};

enum dest_state { D_NEW, D_RESOLVING, D_READY };

struct dest {
    struct dest *next;
    struct delivery *dl;
    char name[256];
    enum dest_state state;
    int64_t resolved_ms;
    struct dns_query *query;
    struct target *targets;
    size_t ntargets;
    struct job *head, *tail;
    size_t njobs;
    size_t nconns;
    struct conn *idle;
    /* The MTA-STS policy found before the MX lookup (a copy). */
    struct policy_req *preq;
    bool sts_have;
    struct sts_policy sts;
    char sts_id[POLICY_ID_MAX + 1];
    /* Routing and flow control (route.c). */
    bool has_nexthop;             /* relayhost or a transport_maps next hop */
    bool transport;               /* the next hop is from transport_maps */
    struct conf_hostport nexthop; /* bracketed: no MX lookup; port 0: default */
    struct conc_window window;    /* connections allowed now */
    struct token_bucket bucket;   /* destination_limits rate= */
    struct deadness dead;         /* smtp_destination_dead_threshold */
    /* shared_state (route.c): tokens the fleet's bucket granted and when,
     * a grant in flight, no new request before grant_retry_ms; the local
     * bucket at this node's share while Redis is away; the configured
     * concurrency= (0: none) that the fleet splits. */
    unsigned grants;
    int64_t grant_ms;
    bool grant_pending;
    int64_t grant_retry_ms;
    int64_t grant_fail_until; /* a grant failed: the local share until then */
    struct token_bucket fallback;
    double fallback_share;
    unsigned conc_conf;
    /* A connection lease of the fleet (shared_lease_take()) granted and not
     * yet given to a connection, one being asked for, no new ask before
     * lease_retry_ms. */
    uint64_t spare_lease;
    bool lease_pending;
    int64_t lease_retry_ms;
    /* An enforce policy deferred an attempt (verdict sts_recheck): the next
     * attempt looks the policy up again with policy_recheck() (RFC 8461
     * 5), not from the addresses and policy kept from before. */
    bool sts_recheck;
    bool rechecking; /* the lookup in flight is such a recheck */
    /* DANE (dane.c): one entry per MX host, TLSA lookups in flight, and
     * the MX answer kept until they end. */
    struct dane_host *dane;
    size_t ndane;
    size_t dane_pending;
    enum dns_status mx_status;
    const char *mx_why;
};

#define PAUSE_MAX 256

/* A waiter for a write of the pause table (pause.c). */
struct save_waiter;

/* The pause table and its writer (pause.c). The table is the loop
 * thread's; the worker sees only text, the paths and the result fields
 * while busy. */
struct pause_state {
    struct pause_rec recs[PAUSE_MAX];
    size_t n;
    char path[4200];
    char tmp[4220];
    char dir[4096];
    uv_work_t work;
    bool busy;
    uint64_t wanted;  /* generation of the table in memory */
    uint64_t writing; /* generation being written */
    struct buf text;  /* owned by the worker while busy */
    int status;       /* of the last write */
    char why[300];
    struct save_waiter *waiters;
};

struct delivery {
    uv_loop_t *loop;
    struct delivery_options opt; /* the functions and the clock */
    struct conf *conf;
    struct queue *q;
    struct dns *dns;
    struct tls_ctx *tls_ctx;
    char helo[256];
    uv_timer_t due_timer;
    uv_timer_t kick_timer;
    uv_timer_t sweep_timer;
    /* A destination's message rate (route.c) said wait: run the
     * destinations again when it ends. */
    uv_timer_t route_timer;
    int open_handles;
    bool leasing;
    bool want_lease;
    bool stopping;
    bool closing;
    size_t nconns;
    struct conn *conns; /* every connection, for delivery_close() */
    size_t inflight;
    size_t pending_reqs;
    struct dest *dests;
    /* relayhost, parsed */
    bool relay;
    struct conf_hostport relayhost;
    /* smtp_sasl_password_maps when smtp_sasl_auth_enable (auth.c), or NULL */
    struct conf_map *sasl;
    /* MTA-STS (policy/) and the operator's tls_policy_file. */
    struct policy *pol;
    struct policy_overrides *ov;
    uv_timer_t sts_timer;
    uint64_t sts_testing_failures;
    uint64_t sts_enforce_failures;
    uint64_t sts_rechecks;
    struct recheck *rechecks;       /* expiring recipients waiting for policy_recheck() */
    struct delay_warning *warnings; /* delay warnings in flight (dsn.c) */
    struct pause_state pause;
    struct tlsrpt_store *tlsrpt; /* the daemon's TLS-RPT store, or NULL */
    uint64_t tlsrpt_serial;      /* session ids of the store */
    /* transport_maps and destination_limits (route.c); NULL: none. */
    struct conf_map *transport;
    struct conf_map *limits;
    struct route_reject *rejects; /* error:/defer: recipients until route_flush() */
};

/* The engine's wall clock (the options' fake one, or the real one) and its
 * clock for intervals. */
int64_t dl_now(const struct delivery *dl);
int64_t dl_mono(const struct delivery *dl);

/* Give the MTA-STS engine's options the shared policy cache of
 * shared_state, when there is one (engine.c). */
void deliver_policy_remote(const struct delivery *dl, struct policy_options *o);

/* A closed engine frees itself here once nothing is left in flight. */
void deliver_maybe_free(struct delivery *dl);

/* ---- pauses (pause.c, asked by the scheduler) ----------------------------------- */

/* Is delivery to domain paused at now_ms (domain NULL: is everything
 * paused)? *until_ms is the pause's end (0: until resumed). Ended pauses
 * are dropped here. */
bool deliver_paused(struct delivery *dl, const char *domain, int64_t now_ms, int64_t *until_ms);
/* Read <queue_directory>/pauses into the table (delivery_new(), before
 * the first lease). Pauses that ended meanwhile are dropped and logged; a
 * damaged line is logged as FILE:LINE: reason and skipped; an unreadable
 * file is logged and ignored. Never fails. */
void deliver_pause_load(struct delivery *dl);
/* Everything paused: lease nothing; look again when the pause ends. */
bool pause_all(struct delivery *dl);
/* A leased recipient of a paused domain goes back to the queue, due at the
 * pause's end (or at the next recheck), without counting an attempt. */
bool pause_postpone(struct delivery *dl, const struct queue_due *due, int64_t now);
/* Writes of the pause table in progress or waited for (for shutdown). */
size_t deliver_pause_busy(const struct delivery *dl);
/* The pause table changed: give waiting jobs of paused destinations back
 * to the queue, and lease again if delivery resumed. */
void deliver_pause_changed(struct delivery *dl);

/* ---- shared between the files of the engine ------------------------------- */

/* A queue report in flight. */
struct req {
    struct delivery *dl;
    char id[QUEUE_ID_LEN + 1];
    uint32_t rcpt;
    const char *what;
};

typedef int (*report_fn)(struct queue *, const char *, uint32_t, const struct queue_result *,
                         queue_done_cb, void *);

/* A recipient for the DSN path (dsn.c): what its queue record becomes and
 * what its part of the DSN (RFC 3464 2.3) says. */
struct dsn_item {
    uint32_t rcpt; /* index in the message */
    /* the record */
    int code;
    char dsn[12]; /* enhanced status, also the DSN's Status: */
    char *text;   /* owned: the reason, also the DSN's human text */
    char mx[256];
    char ip[64];
    char tls[160];
    /* the DSN's part */
    char remote_mta[256]; /* "" when none was reached */
    char *diag;           /* owned: the remote reply, or NULL */
    int64_t last_attempt_ms;
    int64_t will_retry_until_ms; /* delayed: the end of the recipient's lifetime */
};

/* The kind of DSN: a failure (RFC 3464 Action: failed; the recipients are
 * marked bounced once it is committed) or a delay warning (Action: delayed;
 * recipients with NOTIFY=DELAY or no NOTIFY, as Postfix does - RFC 3461
 * 4.1 leaves the default open; nothing is marked). */
enum dsn_kind { DSN_FAILED, DSN_DELAYED };

/* Called once when a DSN's recipients are settled: status 0 or the first
 * error; n recipients were marked. */
typedef void (*dsn_done_cb)(void *arg, int status, size_t n);

struct dsn_opts {
    /* On any failure leave the recipients as they are and report it (the
     * operator's bounce); otherwise a failure DSN that cannot be queued
     * leaves them deferred with 4.3.0 "(bounce not sent: why)". */
    bool keep_on_error;
    dsn_done_cb cb; /* optional */
    void *arg;
};

/* ---- engine.c: small helpers and the TLS context --------------------------- */

char *dl_strdup(const char *s);
uint16_t dest_port(const struct delivery *dl);
struct tls_ctx *delivery_tls_ctx(const struct conf *c, char *why, size_t why_size);

/* ---- job.c: jobs, queue reports, the log line ------------------------------ */

void dl_req_done(void *arg, int status);
struct req *dl_req_new(struct delivery *dl, const char *id, uint32_t rcpt, const char *what);
void dl_report(struct delivery *dl, report_fn fn, const char *what, const char *id, uint32_t rcpt,
               const struct queue_result *res);
void dl_unlease(struct delivery *dl, const char *id, uint32_t rcpt);
/* A leased recipient that cannot be scheduled now is deferred (4.3.0, text). */
void dl_defer_due(struct delivery *dl, const struct queue_due *due, const char *text);
/* The one log line per recipient and attempt (Postfix-shaped, see job.c):
 * the times of arrival, lease, connection start, session ready and the
 * end; attempted false writes "delays=D/0/0/0" (nothing was tried). */
void deliver_log_rcpt(const char *id, const char *addr, const char *relay, int64_t arrival,
                      int64_t lease, int64_t conn, int64_t ready, int64_t done, bool attempted,
                      const struct smtp_outcome *o, const char *extra);
/* Append due's recipient to j (the array grows by doubling: most messages
 * have one recipient); false when out of memory. */
bool job_add_rcpt(struct job *j, const struct queue_due *due);
void job_free(struct job *j);
void conn_tls_summary(const struct smtp_client *c, char *out, size_t size);
/* Report every recipient of a finished job and free it: each recipient's
 * outcome (all: one for every recipient) goes through the verdict, unless
 * all_v says what it means for all of them. */
void job_finish(struct delivery *dl, struct job *j, const struct smtp_outcome *all,
                const struct verdict *all_v);
/* A whole job ends as v says, with text (DNS failure, no address, a local
 * error). */
void job_fail(struct delivery *dl, struct job *j, const struct verdict *v, const char *text);
int job_load(struct delivery *dl, struct job *j);

/* ---- dsn.c: the DSN path --------------------------------------------------- */

/*
 * The one DSN path, for failure, expiry and operator bounces (and delay
 * warnings): recipients whose NOTIFY does not ask for the kind are left out
 * of the DSN; none goes to the null sender (RFC 5321 6.1), the recipients
 * are then marked without one; a DSN too big with RET=FULL is built again
 * with the headers only; it is queued from the null sender to the original
 * sender; a failure DSN marks its recipients bounced only after that
 * commit. qm NULL: the message could not be read. items (n of them) are
 * taken over. Returns 0 (o->cb, if any, is called once later); with
 * o->keep_on_error an error when nothing was done (cb not called).
 */
int dsn_send(struct delivery *dl, const char *id, const struct queue_message *qm, struct view body,
             enum dsn_kind kind, struct dsn_item *items, size_t n, const struct dsn_opts *o);
/* Free items that dsn_send() did not take. */
void dsn_items_free(struct dsn_item *items, size_t n);
char *dl_read_body(struct delivery *dl, const char *id, uint64_t size, size_t *len);

/* Does a recipient's NOTIFY (QUEUE_NOTIFY_*) ask for this kind of DSN? */
bool dsn_wanted(enum dsn_kind kind, unsigned notify);

/*
 * delay_warning_time: the recipients of job j that this attempt deferred
 * (rcpts[0..n), with their outcomes) may call for the message's one delay
 * warning (RFC 3464 Action: delayed). Sent when the message has waited
 * that long since arrival, has no warning on record (QUEUE_F_DELAY_WARNED)
 * or in flight, its sender is not null and a recipient's NOTIFY asks for
 * it; once the DSN is committed the message is marked warned in the queue,
 * so a restart never sends a second one.
 */
struct delay_rcpt {
    uint32_t rcpt;
    struct smtp_outcome o; /* the attempt's outcome, as logged */
};
void dsn_delay_check(struct delivery *dl, const struct job *j, const struct delay_rcpt *rcpts,
                     size_t n);

/* ---- dane.c: DANE per MX host (RFC 7672) ---------------------------------- */

/* smtp_tls_security_level: 0 no DANE, 1 dane, 2 dane-only. */
int dl_dane_level(const struct delivery *dl);
/* A warning when the level asks for DANE the resolver cannot give. */
void dane_warn(const struct delivery *dl);
/* After the MX answer (kept in d->mx_status / mx_why, targets filled):
 * look up the TLSA records of the hosts DANE may apply to. true when
 * lookups were started: dest_resolved() is called when they end. */
bool dest_dane_start(struct dest *d, const struct dns_mx_result *r);
/* Cancel the lookups in flight and free the per-host table. */
void dest_dane_clear(struct dest *d);
/* The DANE entry of a host of the destination, or NULL. */
const struct dane_host *dest_dane_find(const struct dest *d, const char *host);
/* dest.c: the answer became targets (or the jobs fail). */
void dest_resolved(struct dest *d, enum dns_status st, const char *why, const char *qtype);

/* ---- conn.c: connections --------------------------------------------------- */

void conn_idle_remove(struct conn *cn);
bool conn_send(struct conn *cn, struct job *j);
struct job *dest_pop(struct dest *d);
const struct target *conn_target(const struct conn *cn);
enum smtp_tls_mode conn_tls_level(const struct delivery *dl);
void conn_new(struct dest *d, struct job *j);

/* ---- tlsrpt.c: TLS-RPT counts (RFC 8460) ----------------------------------- */

/* The session of cn is ready (READY) or failed before it was (CLOSED,
 * res): count it once for its recipient domain when it negotiated or
 * tried to negotiate TLS. Nothing without a store, for relayhost and
 * address literals, and for TLS-Required: No sessions. */
void conn_tlsrpt(struct conn *cn, const struct tls_facts *f, const struct smtp_outcome *res);
/* DANE excluded cn's current target before connecting (dnssec-invalid,
 * dane-required): count it as a failed "tlsa" session. */
void conn_tlsrpt_skipped(struct conn *cn);
/* The MTA-STS discovery of d failed (policy engine result): count it. */
void dest_tlsrpt_policy_failure(struct dest *d, const struct policy_result *r);

/* ---- tlspolicy.c: the TLS policy of a connection --------------------------- */

bool dest_sts_applies(const struct dest *d);
void conn_policy(struct conn *cn);
enum smtp_tls_mode conn_tls_mode(const struct conn *cn);
void job_policy(struct job *j, const struct conn *cn);
void conn_report(struct conn *cn, const char *type, const char *text);
void conn_policy_fail(struct conn *cn, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool conn_tls_check(struct smtp_client *c, const struct tls_facts *f, struct smtp_outcome *out,
                    void *arg);
void conn_closed_policy(struct conn *cn, const struct smtp_outcome *res, const struct tls_facts *f);
/* Before connecting: false when the policy excludes the current target. */
bool conn_target_allowed(struct conn *cn);
/* The session is ready: a testing policy reports what would have failed. */
void conn_ready_policy(struct conn *cn, const struct tls_facts *f);

/* ---- auth.c: SMTP AUTH to the next hop --------------------------------------- */

/* The smtp_sasl_password_maps of c when smtp_sasl_auth_enable, else NULL
 * (*out). 0, or ERR_INVAL with "FILE:LINE: reason" / "parameter: reason"
 * lines appended to err (never a password). */
int delivery_sasl_load(const struct conf *c, struct conf_map **out, struct buf *err);
/* The credentials for the connection's next hop, then its current remote
 * host; false (both NULL) when none. The strings belong to dl->sasl. */
bool conn_auth(const struct conn *cn, const char **user, const char **password);

/* ---- dest.c: destinations -------------------------------------------------- */

void dest_quit_idle(struct dest *d);
void dest_run(struct dest *d);
struct dest *dest_get(struct delivery *dl, const char *name);

/* ---- sched.c: the scheduler ------------------------------------------------ */

void sched_rechecks_drop(struct delivery *dl);
void sched_arm_due(struct delivery *dl);
void sched_lease_in(struct delivery *dl, uint64_t delay_ms);
void sched_on_sweep(uv_timer_t *t);
void sched_on_due_timer(uv_timer_t *t);

/* Postfix's delay numbers: "0.12", "3.4", "12", "1234" (two significant
 * decimals below 10 s, one below 100 s, none above). */
void deliver_format_delay(int64_t ms, char *out, size_t size);

#endif
