/*
 * base.h - the shared base of Convoy: error codes, bounded buffers, views,
 * time helpers and logging.
 *
 * Every module may include this header; base uses no other module.
 *
 * Invariants:
 *  - Functions that can fail return 0 on success or a negative enum err value.
 *  - A struct buf never grows past its max; an append that would is refused
 *    with ERR_TOOBIG and leaves the buffer unchanged.
 *  - Logging is safe from any thread: each line is formatted privately and
 *    written with a single write(2).
 */
#ifndef CONVOY_BASE_H
#define CONVOY_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

/* ---- errors ---------------------------------------------------------- */

/* Mechanical failures. Delivery outcomes (SMTP code, enhanced status) are a
 * separate struct in the modules that produce them. */
enum err {
    ERR_OK = 0,
    ERR_NOMEM = -1,     /* allocation failed */
    ERR_IO = -2,        /* read/write/system call failed */
    ERR_TIMEOUT = -3,   /* a deadline passed */
    ERR_PROTO = -4,     /* the peer broke the protocol */
    ERR_TLS = -5,       /* TLS handshake or record failure */
    ERR_DNS = -6,       /* DNS lookup failed */
    ERR_FULL = -7,      /* storage full (disk or map cannot grow) */
    ERR_TOOBIG = -8,    /* a bound was reached */
    ERR_INVAL = -9,     /* invalid argument or input */
    ERR_NOTFOUND = -10, /* no such item */
    ERR_EXISTS = -11,   /* item already exists */
    ERR_CLOSED = -12,   /* the object is shutting down or closed */
    ERR_VERSION = -13,  /* stored data of an unsupported version */
    ERR_CORRUPT = -14,  /* stored data does not decode */
    ERR_NOTYET = -15,   /* not implemented yet */
    ERR_AGAIN = -16,    /* temporary condition, try again */
    ERR_PERM = -17,     /* permission denied */
};

/* A short, static, human-readable text for an error code. Never NULL. */
const char *err_str(int err);

/* ---- buffers and views ------------------------------------------------ */

/* A view of bytes it does not own. */
struct view {
    const char *ptr;
    size_t len;
};

#define VIEW_LIT(s) ((struct view){(s), sizeof(s) - 1})

/* A growable byte buffer with a hard ceiling. data is always NUL-terminated
 * (the NUL is not counted in len and does not count against max). */
struct buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max;
};

/* Initialise an empty buffer that may hold at most max bytes. No allocation. */
void buf_init(struct buf *b, size_t max);
/* Free the storage; the buffer is empty and reusable with the same max. */
void buf_free(struct buf *b);
/* Drop the contents, keep the storage. */
void buf_reset(struct buf *b);
/* Append n bytes. ERR_TOOBIG past max, ERR_NOMEM; unchanged on error. */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
/* printf-style append with the same bounds. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Remove the first n bytes (n is clamped to len). */
void buf_consume(struct buf *b, size_t n);
/* Ensure room for n more bytes without exceeding max. */
int buf_reserve(struct buf *b, size_t n);

/* Bounded string copy: always NUL-terminates when size > 0. Returns the
 * length of src; a return >= size means the copy was truncated. */
size_t str_copy(char *dst, const char *src, size_t size);
/* Append the base64 (RFC 4648 4, padded, one line) of n bytes to out.
 * ERR_TOOBIG past out's max, ERR_NOMEM; out unchanged on error. */
int base64_encode(const uint8_t *in, size_t n, struct buf *out);
/* Lower-case hex of n bytes into out, NUL-terminated; as many whole bytes
 * as fit in size. Returns the length written. */
size_t hex_encode(const uint8_t *p, size_t n, char *out, size_t size);
/* Parse a whole decimal string into an unsigned 64-bit value: no sign, no
 * spaces, no overflow. 0 or ERR_INVAL. */
int str_to_u64(const char *s, uint64_t *out);
/* ASCII case-insensitive equality of a view and a string. */
bool view_eq_ci(struct view v, const char *s);

/* ---- names and addresses ---------------------------------------------- */

/* What host_name_ok() accepts beyond RFC 1035/5321 LDH labels (letters,
 * digits, inner hyphens; labels 1..63 octets; at most 253 in all). */
enum host_name_flags {
    HOST_NAME_TRAILING_DOT = 1 << 0, /* one trailing dot (a rooted name) */
    HOST_NAME_UNDERSCORE = 1 << 1,   /* '_' in labels (SRV-style, _mta-sts) */
    /* Any octet but space, control characters, DEL and backslash, and no
     * hyphen rules: what a resolver can be asked for without presentation
     * escapes. Implies HOST_NAME_UNDERSCORE. */
    HOST_NAME_DNS = 1 << 2,
};
/* Is s[0..n) a host name with that syntax (flags from enum host_name_flags)?
 * The one host-name syntax check: conf (myhostname, relayhost), policy (mx
 * patterns, policy domains) and dns (query names) differ only in flags. */
bool host_name_ok(const char *s, size_t n, unsigned flags);
/* The domain of an address: what follows its last '@', ASCII-lowercased,
 * without one trailing dot; "" when there is no '@'. Truncated to size. */
void addr_domain(const char *addr, char *out, size_t size);
struct sockaddr;
/* A socket address as "1.2.3.4:25" or "[::1]:25" (what logs and listener
 * keys show); "?" for another family. Truncated to size. */
void sockaddr_text(const struct sockaddr *sa, char *out, size_t size);

/* ---- files ------------------------------------------------------------ */

/* Read the rest of f into out (appending), at most out->max bytes in all.
 * 0; ERR_TOOBIG when there is more (out then holds what fit); ERR_IO on a
 * read error (errno set). Does not close f. */
int file_read_stream(FILE *f, struct buf *out);
/* Open path and read it all, as file_read_stream(). ERR_IO when it cannot
 * be opened, with errno saying why ("-" is not standard input here). */
int file_read_all(const char *path, struct buf *out);

/* ---- exit codes --------------------------------------------------------- */

/* The programs' exit statuses, defined once. convoyctl: 0 ok, 1 failure,
 * 2 usage, 3 convoyd not running; convoyd --check-config: 78 (sysexits'
 * EX_CONFIG) for a bad configuration. */
#define EXIT_USAGE 2
#define EXIT_NOT_RUNNING 3
#define EXIT_CONFIG 78

/* ---- numbers ---------------------------------------------------------- */

/* splitmix64: the next number of a sequence that walks *state through all
 * 2^64 values before it repeats one (distinct calls on one state give
 * distinct numbers). Spread, not secret: not for keys or tokens. */
static inline uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- time ------------------------------------------------------------- */

/* Wall clock in milliseconds since the epoch. */
int64_t time_now_ms(void);
/* Monotonic clock in milliseconds. */
int64_t time_mono_ms(void);
/* Parse a duration: a number with an optional unit s, m, h, d or w
 * (bare number = seconds). Returns 0 and seconds, or ERR_INVAL. */
int time_parse_duration(const char *s, int64_t *seconds);
/* Format seconds back to the largest exact unit ("5d", "300s"). */
void time_format_duration(int64_t seconds, char *out, size_t size);
/* RFC 5322 3.3 date-time in local time, e.g. "Mon, 30 Nov 2026 16:41:01 +0000". */
void time_format_rfc5322(time_t t, char *out, size_t size);

/* ---- logging ---------------------------------------------------------- */

/* Levels, most severe first. Named LOGL_* so they do not clash with syslog.h. */
enum log_level { LOGL_ERR, LOGL_WARN, LOGL_INFO, LOGL_DEBUG };

enum log_target {
    LOG_TO_SYSLOG = 1 << 0, /* datagrams to /dev/log */
    LOG_TO_STDERR = 1 << 1, /* lines on standard error */
};

/* Configure logging. name is the syslog name ("convoy"); lines are tagged
 * "name/component[pid]:" as Postfix tags its programs. facility is a syslog
 * facility name ("mail", "local0", ...); ERR_INVAL for an unknown one. With
 * debug false, LOGL_DEBUG lines are dropped. May be called again (reload). */
int log_setup(const char *name, const char *facility, unsigned targets, bool debug);
/* Is facility a known syslog facility name? */
bool log_facility_valid(const char *facility);
/* Write one line. component is the short program-like name ("smtpd",
 * "qmgr", "smtp", "sts", "convoyd"). A trailing newline is not needed. */
void log_msg(enum log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(enum log_level level, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Batching for an event loop (see log.c): after log_batch_begin(), lines
 * logged by the calling thread are kept and written by log_flush(), which
 * the loop calls before it blocks; lines of other threads flush at once,
 * after those before them. log_batch_end() flushes and stops batching;
 * exit() flushes. */
void log_batch_begin(void);
void log_flush(void);
void log_batch_end(void);

#define log_err(comp, ...) log_msg(LOGL_ERR, comp, __VA_ARGS__)
#define log_warn(comp, ...) log_msg(LOGL_WARN, comp, __VA_ARGS__)
#define log_info(comp, ...) log_msg(LOGL_INFO, comp, __VA_ARGS__)
#define log_debug(comp, ...) log_msg(LOGL_DEBUG, comp, __VA_ARGS__)

/* ---- privileges (privs.c) ---------------------------------------------- */

/* Look up mail_owner: its user and primary group ids. ERR_NOTFOUND when no
 * such user exists, ERR_INVAL when it is root (user or group id 0); why
 * says which. */
int priv_lookup(const char *name, uid_t *uid, gid_t *gid, char *why, size_t whylen);
/* Give dir, and everything under it that root owns, to uid:gid. Symbolic
 * links are neither followed nor changed. Only useful as root. */
int priv_chown_tree(const char *dir, uid_t uid, gid_t gid);
/* Become name (uid, gid) for good: setgid, initgroups, setuid, then check
 * that neither root's user nor group id can be taken back. Only as root. */
int priv_drop(const char *name, uid_t uid, gid_t gid, char *why, size_t whylen);
/* For convoyctl run as root, so that it never leaves root-owned files in
 * the state directory: become mail_owner when set, else the owner of dir
 * when that is not root (creating dir for mail_owner when it is missing).
 * Does nothing when not root or when dir is root's. */
int priv_become_dir_owner(const char *mail_owner, const char *dir, char *why, size_t whylen);

/* ---- metrics (metrics.c) ----------------------------------------------- */

/*
 * The one registry of Convoy's Prometheus series. Every series is a row of
 * CONVOY_METRICS, so the names, types, help texts and label names live in
 * one place (docs/metrics.md lists them; a test checks it lists them all).
 *
 * M(id, type, name, help, label1, label2)
 *   type: COUNTER, GAUGE, or a histogram HIST_<bounds> (see metrics.c);
 *   label1, label2: label names, NULL for none.
 *
 * Updating a series is one mutex-protected add on a small table: cheap, and
 * safe from any thread (the queue writer observes from its own). Label
 * values are short fixed words ("policy", "verified", "enforce"); at most
 * METRICS_MAX_CHILDREN value pairs are kept per series, later ones are
 * counted under "other".
 *
 * The delivery engine's series (recipients, TLS sessions, MTA-STS
 * verdicts, sessions out, connection cache, latency) are updated through
 * metrics_delivery_*() below.
 */
#define CONVOY_METRICS(M)                                                                          \
    M(MET_START_TIME, GAUGE, "convoy_start_time_seconds",                                          \
      "Time convoyd started, in seconds since the epoch", NULL, NULL)                              \
    M(MET_MSG_ACCEPTED, COUNTER, "convoy_messages_accepted_total",                                 \
      "Messages accepted by the SMTP server (each answered 250 after it was synced to disk)",      \
      NULL, NULL)                                                                                  \
    M(MET_MSG_REFUSED, COUNTER, "convoy_messages_refused_total",                                   \
      "4xx and 5xx replies of the SMTP server to MAIL, RCPT, DATA, BDAT and the end of a "         \
      "message, by reason class and reply class",                                                  \
      "reason", "code")                                                                            \
    M(MET_SESSIONS_IN, GAUGE, "convoy_smtpd_sessions", "SMTP server sessions open now", NULL,      \
      NULL)                                                                                        \
    M(MET_QUEUE_MESSAGES, GAUGE, "convoy_queue_messages", "Messages in the queue", NULL, NULL)     \
    M(MET_QUEUE_RCPTS, GAUGE, "convoy_queue_recipients", "Recipients in the queue, by state",      \
      "state", NULL)                                                                               \
    M(MET_QUEUE_OLDEST, GAUGE, "convoy_queue_oldest_message_age_seconds",                          \
      "Age of the oldest message in the queue (0 when the queue is empty)", NULL, NULL)            \
    M(MET_QUEUE_COMMIT, HIST_COMMIT, "convoy_queue_commit_requests",                               \
      "Requests (submissions, leases, results) carried by one synced queue commit", NULL, NULL)    \
    M(MET_DNS_QUERIES, COUNTER, "convoy_dns_queries_total",                                        \
      "DNS queries sent to the resolvers (cache hits not counted), by record type", "type", NULL)  \
    M(MET_DNS_FAILURES, COUNTER, "convoy_dns_failures_total",                                      \
      "DNS lookups that failed (not a definite answer or no-such-name), by record type", "type",   \
      NULL)                                                                                        \
    M(MET_STS_FETCHES, COUNTER, "convoy_sts_policy_fetches_total",                                 \
      "MTA-STS policy fetches, by result", "result", NULL)                                         \
    M(MET_RCPT_DELIVERED, COUNTER, "convoy_recipients_delivered_total",                            \
      "Recipients delivered (remote 250)", NULL, NULL)                                             \
    M(MET_RCPT_DEFERRED, COUNTER, "convoy_recipients_deferred_total",                              \
      "Delivery attempts that ended deferred, by reason class", "reason", NULL)                    \
    M(MET_RCPT_BOUNCED, COUNTER, "convoy_recipients_bounced_total",                                \
      "Recipients returned to the sender, by reason class", "reason", NULL)                        \
    M(MET_TLS_SESSIONS, COUNTER, "convoy_tls_sessions_total",                                      \
      "Outbound TLS sessions, by outcome (verified, opportunistic, failed) and RFC 8460 result "   \
      "type of a failure",                                                                         \
      "outcome", "result_type")                                                                    \
    M(MET_STS_VERDICTS, COUNTER, "convoy_sts_verdicts_total",                                      \
      "MTA-STS decisions on delivery candidates, by mode and verdict", "mode", "verdict")          \
    M(MET_SESSIONS_OUT, GAUGE, "convoy_smtp_sessions", "Outbound SMTP sessions open now", NULL,    \
      NULL)                                                                                        \
    M(MET_CONN_CACHE_HITS, COUNTER, "convoy_smtp_connection_cache_hits_total",                     \
      "Messages sent over a cached (reused) outbound connection", NULL, NULL)                      \
    M(MET_DELIVERY_LATENCY, HIST_LATENCY, "convoy_delivery_latency_seconds",                       \
      "Time from acceptance to a recipient's final delivery", NULL, NULL)                          \
    M(MET_SHARED_UP, GAUGE, "convoy_shared_state_up",                                              \
      "1 while the shared_state Redis is connected and ready, else 0", NULL, NULL)                 \
    M(MET_SHARED_GRANTS, COUNTER, "convoy_shared_grant_requests_total",                            \
      "Requests for destination rate tokens sent to shared_state, by result (granted, denied, "    \
      "error)",                                                                                    \
      "result", NULL)                                                                              \
    M(MET_SHARED_TOKENS, COUNTER, "convoy_shared_tokens_granted_total",                            \
      "Destination rate tokens (messages) granted by shared_state", NULL, NULL)                    \
    M(MET_SHARED_FALLBACKS, COUNTER, "convoy_shared_fallbacks_total",                              \
      "Messages sent under this node's fallback share of a destination rate because "              \
      "shared_state was away or slow",                                                             \
      NULL, NULL)                                                                                  \
    M(MET_SHARED_RTT, HIST_RTT, "convoy_shared_rtt_seconds",                                       \
      "Round-trip time of requests to shared_state", NULL, NULL)                                   \
    M(MET_SHARED_TLSRPT, COUNTER, "convoy_shared_tlsrpt_requests_total",                           \
      "TLS-RPT requests to shared_state, by request (publish, claim, records, sent) and result",   \
      "request", "result")

enum metric_id {
#define METRIC_ID(id, type, name, help, l1, l2) id,
    CONVOY_METRICS(METRIC_ID)
#undef METRIC_ID
        MET_COUNT
};

#define METRICS_MAX_CHILDREN 64

/* Add v to a counter or gauge (v may be negative for a gauge only). l1, l2
 * are the label values, NULL where the series has fewer labels. */
void metric_add(enum metric_id id, const char *l1, const char *l2, double v);
/* Set a gauge. */
void metric_set(enum metric_id id, const char *l1, const char *l2, double v);
/* Forget a gauge's labelled values (before a collector sets them anew). */
void metric_clear(enum metric_id id);
/* Count one observation in a histogram. */
void metric_observe(enum metric_id id, const char *l1, const char *l2, double v);
/* A function run (on the caller's thread) before each rendering, to set
 * gauges that are cheaper to read than to track. At most 16. */
typedef void (*metrics_collector)(void *arg);
void metrics_add_collector(metrics_collector fn, void *arg);
/* The whole registry in the Prometheus text exposition format 0.0.4. */
int metrics_render(struct buf *out);
/* The name, help, type word and label names of a series, for docs/tests. */
const char *metric_name(enum metric_id id);

/* The reason class of an enhanced status code (RFC 3463) or of a reply
 * text starting with one ("5.7.1 ..."): address, mailbox, system, network,
 * protocol, content, policy; "other" when there is none. */
const char *metrics_reason_class(const char *status);

/* The delivery engine's calls, one per event (see docs/metrics.md):
 *  - metrics_delivery_result(): once per recipient attempt that ended;
 *    status "sent", "deferred" or "bounced", enhanced status code of the
 *    reason ("4.4.1"; NULL when none). For "sent", latency_s is the time
 *    since the message was accepted (a negative value is not observed).
 *  - metrics_delivery_tls(): once per outbound TLS handshake: outcome
 *    "verified", "opportunistic" or "failed"; result_type the RFC 8460 4.3
 *    result type of a failure ("certificate-expired", "starttls-not-
 *    supported", ...) or NULL.
 *  - metrics_delivery_sts(): once per MTA-STS decision on a candidate host:
 *    mode "enforce" or "testing", verdict "ok" or "refused".
 *  - metrics_delivery_session(): +1 when an outbound session opens, -1 when
 *    it closes.
 *  - metrics_delivery_cache_hit(): a message goes out over a reused
 *    connection. */
void metrics_delivery_result(const char *status, const char *dsn, double latency_s);
void metrics_delivery_tls(const char *outcome, const char *result_type);
void metrics_delivery_sts(const char *mode, const char *verdict);
void metrics_delivery_session(int delta);
void metrics_delivery_cache_hit(void);

#endif
