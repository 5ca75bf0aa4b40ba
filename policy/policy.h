/*
 * policy.h - public contract of the policy module: MTA-STS (RFC 8461)
 * discovery, fetch, parse, cache and MX matching, the TLS a delivery must
 * have, the operator's TLS policy overrides, and TLS reporting (RFC 8460):
 * the _smtp._tls record, the store of session results, the reports.
 *
 * Layers, from pure to effectful (each usable on its own):
 *  1. Parsers and rules, no I/O: the TXT record (RFC 8461 3.1), the policy
 *     file (3.2), MX pattern matching (4.1), the HTTP response checks (3.3),
 *     the override file, and the TLS requirement of one MX host.
 *  2. The cache: one LMDB environment file holding one record per policy
 *     domain; it survives restarts and may be read (and written) by
 *     convoyctl while convoyd runs.
 *  3. The engine (struct policy): on a libuv loop, answers "which policy
 *     applies to DOMAIN?" from the cache or by TXT lookup (dns/) and HTTPS
 *     fetch (tls/ over uv_tcp), one discovery per domain at a time.
 *  4. TLS-RPT (the last section): the record parser and the report and
 *     mail builders are pure; the store is its own LMDB file.
 *
 * Standards: RFC 8461 (MTA-STS), RFC 8460 (TLS-RPT: 3 the record, 4 the
 * report, 5 its delivery), RFC 6125 via tls/ for the policy host's certificate,
 * RFC 9112 (HTTP/1.1 message syntax) via http-parser.
 *
 * How delivery uses it (mta/), per destination domain D:
 *   1. policy_get(p, D, cb, ...) -> struct policy_result r (copy r.policy
 *      with policy_sts_copy() if kept past the callback); then MX lookup.
 *   2. ov = policy_override_find(overrides, D); for each MX host h in DNS
 *      order: q = policy_tls_requirement(r.have_policy ? r.policy : NULL,
 *      ov, h). Skip h when !q.deliver (enforce, no match: log it). Use TLS
 *      q.level: VERIFY = STARTTLS required and the certificate verified for
 *      h (never a plaintext retry), MAY = opportunistic, NONE = plaintext,
 *      ENCRYPT = STARTTLS required without verification. For an override
 *      with VERIFY, judge the facts with policy_override_cert_ok().
 *      q.report_only (testing): deliver as MAY, report facts.verified.
 *   3. enforce and no usable host: defer (4.7.5), never bounce at once;
 *      before the deferral becomes a bounce, policy_recheck(p, D, ...) and
 *      retry if it returns a different policy.
 *   4. A timer calls policy_refresh_due(p, N) every minute or so.
 *
 * Threads: the engine and everything it hands out belong to the loop
 * thread. The parsers and the cache functions are reentrant.
 *
 * Ownership: strings passed in are copied. A struct policy_result passed to
 * a callback, and everything it points to, is valid only during the
 * callback: copy what you keep (policy_sts_copy()).
 */
#ifndef CONVOY_POLICY_H
#define CONVOY_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base.h"
#include "tls.h"

/* ==== parsed values ===================================================== */

/* RFC 8461 3.1: id is 1..32 letters or digits. */
#define POLICY_ID_MAX 32
/* Bounds we put on a policy (the RFC has none): more mx lines is invalid. */
#define POLICY_MX_MAX 128
/* A domain or MX host name in presentation form, with its NUL. */
#define POLICY_NAME_MAX 256

enum policy_mode {
    POLICY_MODE_NONE = 0, /* "none": deliver as without a policy */
    POLICY_MODE_TESTING,  /* "testing": deliver anyway, report failures */
    POLICY_MODE_ENFORCE,  /* "enforce": only matching MX hosts, verified TLS */
};
/* "none", "testing", "enforce". Never NULL. */
const char *policy_mode_name(enum policy_mode m);

/* A parsed MTA-STS policy (RFC 8461 3.2). mx holds n_mx patterns, lower
 * case, without a trailing dot; a pattern is "host.domain" or "*.domain". */
struct sts_policy {
    enum policy_mode mode;
    uint32_t max_age; /* seconds, 0..31557600 */
    size_t n_mx;
    char **mx;
};

/* Are two policies the same in every field: mode, max_age and the mx
 * patterns (as a set: order and repeats do not matter; patterns are
 * already lower case)? Two NULLs are equal. */
bool policy_sts_equal(const struct sts_policy *a, const struct sts_policy *b);

/* Free what a parsed policy owns and zero it. NULL is fine. */
void policy_sts_clear(struct sts_policy *p);
/* Deep copy. 0 or ERR_NOMEM (dst is then zeroed). */
int policy_sts_copy(struct sts_policy *dst, const struct sts_policy *src);

/*
 * RFC 8461 3.1: parse one TXT record (its strings already concatenated).
 * 0 with the id (NUL-terminated) in id_out, or ERR_INVAL with the reason in
 * why ("id missing", ...). The record must begin with exactly "v=STSv1;"
 * (policy_txt_is_sts()); then ";"-separated fields with optional spaces or
 * tabs around the ";", an optional final ";", optional spaces or tabs at
 * the end. Extension fields key=value are checked for syntax and ignored;
 * if id repeats, the first wins.
 */
int policy_txt_parse(const char *rec, size_t len, char id_out[POLICY_ID_MAX + 1], char *why,
                     size_t why_size);

/* Does this TXT record count as an MTA-STS record at all? Only when it
 * begins with exactly "v=STSv1;" (case-sensitive, no space before the ';');
 * records that do not are discarded before counting (RFC 8461 3.1). */
bool policy_txt_is_sts(const char *rec, size_t len);

/*
 * RFC 8461 3.1 over a whole answer: discard non-STS records; exactly one
 * must remain and parse. 0 with the id; ERR_NOTFOUND when no record is an
 * MTA-STS record; ERR_INVAL when more than one is, or the one does not
 * parse (why says which).
 */
int policy_txt_select(const char *const *recs, const size_t *lens, size_t n,
                      char id_out[POLICY_ID_MAX + 1], char *why, size_t why_size);

/*
 * RFC 8461 3.2: parse a policy file. Lines end in CRLF or LF; fields are
 * "key:" then optional spaces/tabs then the value, then optional spaces or
 * tabs. Keys are case-sensitive. version (STSv1), mode and max_age are
 * required, mx at least once unless mode is none; a repeated non-mx field
 * is ignored after its first occurrence; unknown fields with a valid syntax
 * are ignored. Anything else (blank lines, spaces before a key, bad values)
 * makes the policy invalid. 0 and *out (free with policy_sts_clear()), or
 * ERR_INVAL with "line N: reason" in why, or ERR_NOMEM.
 */
int policy_parse(const char *text, size_t len, struct sts_policy *out, char *why, size_t why_size);

/*
 * RFC 8461 4.1: does an MX host match one pattern? ASCII case-insensitive;
 * one trailing dot on either side is ignored; "*.rest" matches a host whose
 * labels after the first (non-empty) one equal rest exactly, so
 * "*.example.com" matches "mx.example.com" but neither "example.com" nor
 * "a.b.example.com".
 */
bool policy_pattern_matches(const char *pattern, const char *host);
/* Does host match any mx pattern of the policy? */
bool policy_mx_matches(const struct sts_policy *p, const char *host);

/*
 * Normalise a domain for lookups and cache keys: lower case, no trailing
 * dot, an internationalised name converted to its A-label form (IDNA 2008,
 * libidn2). 0 or ERR_INVAL (empty, too long, not a valid name).
 */
int policy_domain_normalize(const char *in, char out[POLICY_NAME_MAX]);

/* ==== the HTTP response of a policy fetch (RFC 8461 3.3) ================= */

/*
 * Incremental response reader (http-parser underneath). Accepts only
 * status 200 (a 3xx is a redirect and is never followed), a Content-Type
 * whose media type is text/plain (parameters allowed, case-insensitive), and
 * a body of at most max_body bytes, whether sent with Content-Length,
 * chunked, or delimited by the end of the connection.
 */
struct policy_http;

/* Why a response was refused, mapped onto RFC 8460 4.3 result types by
 * policy_failure_result_type(). */
enum policy_failure {
    POLICY_FAIL_NONE = 0,
    POLICY_FAIL_FETCH,   /* sts-policy-fetch-error: connect, DNS of the policy
                            host, timeout, status, redirect, size, HTTP syntax */
    POLICY_FAIL_INVALID, /* sts-policy-invalid: media type, policy syntax,
                            TXT record syntax */
    POLICY_FAIL_WEBPKI,  /* sts-webpki-invalid: the policy host's certificate */
};
/* "sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid";
 * NULL for POLICY_FAIL_NONE. */
const char *policy_failure_result_type(enum policy_failure f);

struct policy_http *policy_http_new(size_t max_body);
/* A reader of the response to a POST (TLS-RPT, RFC 8460 5.2): complete (1)
 * on any 2xx whatever its media type, the body read and dropped; other
 * statuses are ERR_PROTO. */
struct policy_http *policy_http_new_post(void);
void policy_http_free(struct policy_http *h);
/*
 * Feed response bytes. Returns 0 when more are needed, 1 when the response
 * is complete and acceptable (policy_http_body()), or an error: ERR_PROTO
 * (not HTTP, or a status other than 200; why names it), ERR_TOOBIG (body
 * over the bound), ERR_INVAL (media type; *failure is then
 * POLICY_FAIL_INVALID). After a non-zero return, further calls return it
 * again. why receives the reason for the log.
 */
int policy_http_feed(struct policy_http *h, const char *data, size_t n);
/* The connection ended: completes a body delimited by the close (1), or
 * fails a truncated response (ERR_PROTO). */
int policy_http_eof(struct policy_http *h);
/* The body once complete; NUL-terminated for convenience (the NUL is not
 * counted in len), but a body may itself contain NUL bytes. */
struct view policy_http_body(const struct policy_http *h);
int policy_http_status(const struct policy_http *h);
const char *policy_http_why(const struct policy_http *h);
enum policy_failure policy_http_failure(const struct policy_http *h);

/* One-shot helper for tests and fuzzers: the whole response, then EOF.
 * Returns what the reader ended with (1 or an error). */
int policy_http_parse_all(const char *data, size_t n, size_t max_body, struct buf *body, char *why,
                          size_t why_size);

/* ==== operator overrides (tls_policy_file) ============================== */

/*
 * A table in the syntax of Postfix smtp_tls_policy_maps (a text file as
 * postmap reads it): "DOMAIN LEVEL [name=value ...]", '#' comments, blank
 * lines, and lines starting with whitespace continue the previous one.
 * DOMAIN is a domain or ".domain" for its sub-domains. LEVEL is none, may,
 * encrypt, verify or secure; match=a:b:c lists the names a certificate
 * must carry for verify/secure ("hostname" the MX host, "nexthop" the
 * domain, "dot-nexthop" its sub-domains, ".example.com" any sub-domain, or
 * a literal host name). Other attributes (ciphers=, protocols=, ...) are
 * kept but not used. An override applies before MTA-STS: a domain listed
 * here gets exactly its level, whatever its MTA-STS policy says.
 */
enum policy_tls_level {
    POLICY_TLS_NONE = 0, /* plaintext only, never STARTTLS */
    POLICY_TLS_MAY,      /* STARTTLS when offered, no verification */
    POLICY_TLS_ENCRYPT,  /* STARTTLS required, certificate not checked */
    POLICY_TLS_VERIFY,   /* STARTTLS required, certificate verified */
};
/* "none", "may", "encrypt", "verify". */
const char *policy_tls_level_name(enum policy_tls_level l);

#define POLICY_MATCH_MAX 16

struct policy_override {
    char domain[POLICY_NAME_MAX]; /* lower case; ".x" means sub-domains of x */
    enum policy_tls_level level;
    bool secure; /* the level was written "secure" (match default differs) */
    size_t n_match;
    char match[POLICY_MATCH_MAX][POLICY_NAME_MAX];
    const char *file; /* for messages */
    unsigned line;
};

struct policy_overrides;

/* Load a table. NULL on error with every problem appended to err as
 * "FILE:LINE: reason" lines. An empty path gives an empty table. */
struct policy_overrides *policy_overrides_load(const char *path, struct buf *err);
/* The same from memory; name stands for the file in messages. */
struct policy_overrides *policy_overrides_load_mem(const char *name, const char *text, size_t len,
                                                   struct buf *err);
void policy_overrides_free(struct policy_overrides *o);
size_t policy_overrides_count(const struct policy_overrides *o);
/* The entry for a (normalised) domain: an exact entry, else the nearest
 * ".parent" entry. NULL when none. */
const struct policy_override *policy_override_find(const struct policy_overrides *o,
                                                   const char *domain);
/* For verify/secure: does the certificate (its facts) carry a name the
 * entry's match list allows for this domain and MX host? Without a match
 * list: verify means "hostname", secure means "nexthop:dot-nexthop". */
bool policy_override_cert_ok(const struct policy_override *ov, const char *domain,
                             const char *mx_host, const struct tls_facts *facts);

/* ==== the decision for one MX host ======================================= */

enum policy_origin {
    POLICY_ORIGIN_DEFAULT = 0, /* no override, no MTA-STS policy: opportunistic */
    POLICY_ORIGIN_OVERRIDE,    /* the tls_policy_file entry */
    POLICY_ORIGIN_STS,         /* the MTA-STS policy */
};

struct policy_tls_req {
    enum policy_tls_level level;
    enum policy_origin origin;
    enum policy_mode sts_mode;              /* the MTA-STS mode that applies (NONE if none) */
    bool mx_matches;                        /* MTA-STS: the host matches a pattern (true
                                               when no policy applies) */
    bool deliver;                           /* false: do not use this host at all (enforce
                                               and no match) */
    bool report_only;                       /* testing: failures are reported, not fatal:
                                               level is MAY, but the caller records whether
                                               VERIFY would have passed (tls facts) */
    const struct policy_override *override; /* when origin is OVERRIDE */
};

/*
 * The TLS a delivery to mx_host must have (DESIGN: "policy/ decides").
 * sts may be NULL (no policy). Order: an override entry wins; then
 * enforce: a matching host needs VERIFY for mx_host, a non-matching host
 * is not used (deliver false); testing: MAY, report_only, mx_matches says
 * whether it would have been allowed; none or no policy: MAY.
 */
struct policy_tls_req policy_tls_requirement(const struct sts_policy *sts,
                                             const struct policy_override *ov, const char *mx_host);

/*
 * Filter and order MX candidates (hosts in DNS order: by preference, ties
 * shuffled) by the policy. Writes to keep[] the indexes of the hosts to try,
 * in order, and returns their number; matches[i] (may be NULL) says for
 * every input host whether it matched. enforce: matching hosts only, in
 * their order (0 kept means: defer, RFC 8461 5); testing, none, NULL: all
 * hosts. keep must have room for n entries.
 */
size_t policy_filter_mx(const struct sts_policy *sts, const char *const *hosts, size_t n,
                        size_t *keep, bool *matches);

/* ==== the cache ========================================================== */

/* One record per policy domain. The policy fields are valid when
 * have_policy; the attempt fields record the last discovery or fetch. */
struct policy_entry {
    char domain[POLICY_NAME_MAX];
    bool have_policy;
    char id[POLICY_ID_MAX + 1]; /* TXT id the policy was fetched under */
    struct sts_policy policy;
    char *text; /* the policy file as fetched (NUL-terminated) */
    size_t text_len;
    int64_t fetched; /* seconds since the epoch */
    int64_t expires; /* fetched + max_age */
    /* The last fetch attempt, successful or not. */
    int64_t last_attempt;
    char attempt_id[POLICY_ID_MAX + 1];
    bool attempt_failed;
    enum policy_failure last_failure;
    char last_error[256];
    int64_t txt_checked; /* last TXT lookup that gave a usable answer */
};

void policy_entry_clear(struct policy_entry *e);
/* Is the cached policy there and unexpired at now (seconds)? */
bool policy_entry_valid(const struct policy_entry *e, int64_t now);
/*
 * Should a policy be fetched for TXT id txt_id now? Yes when there is no
 * policy, the id differs or the policy expired; force asks for a refetch of
 * the same id (refresh, recheck). Never within retry_after seconds of a
 * failed attempt for the same id (RFC 8461 3.3: at least five minutes).
 */
bool policy_entry_should_fetch(const struct policy_entry *e, const char *txt_id, bool force,
                               int64_t now, int64_t retry_after);
/* Record a failed attempt: the cached policy (if any) is left untouched. */
void policy_entry_fail(struct policy_entry *e, const char *txt_id, int64_t now,
                       enum policy_failure f, const char *why);
/* Record a fetched policy (text is copied, policy deep-copied). */
int policy_entry_success(struct policy_entry *e, const char *txt_id, const char *text, size_t len,
                         const struct sts_policy *p, int64_t now);

struct policy_cache;

#define POLICY_CACHE_FILE "sts.lmdb"
#define POLICY_CACHE_VERSION 1

/* Open (creating unless readonly) the LMDB file at path (MDB_NOSUBDIR; the
 * lock file is path + "-lock"). ERR_VERSION for a file of another layout
 * version. why gets the reason. */
int policy_cache_open(const char *path, bool readonly, struct policy_cache **out, char *why,
                      size_t why_size);
void policy_cache_close(struct policy_cache *c);
/* Read the record of a domain into *e (clear it after). ERR_NOTFOUND. */
int policy_cache_get(struct policy_cache *c, const char *domain, struct policy_entry *e);
/* Write (replace) a record in one committed transaction. */
int policy_cache_put(struct policy_cache *c, const struct policy_entry *e);
/* Remove a record. ERR_NOTFOUND. */
int policy_cache_del(struct policy_cache *c, const char *domain);
/* Call cb for every record in domain order; a non-zero return stops. The
 * entry is valid only during the call. */
typedef int (*policy_cache_cb)(void *arg, const struct policy_entry *e);
int policy_cache_each(struct policy_cache *c, policy_cache_cb cb, void *arg);

/* ==== the engine ========================================================= */

struct dns;
struct policy;
struct policy_req;

/*
 * A policy cache shared with other nodes (shared_state): before fetching a
 * policy the engine asks get() for the text stored under "DOMAIN ID" (the
 * TXT record's id); a text found there is parsed and checked like a
 * fetched body and used instead of fetching; a policy this node fetched
 * is given to put() with its max_age as lifetime. The local cache stays
 * the source of truth: any failure of get() (its status, or a text that
 * does not parse) just means a fetch. get() returns 0 and calls cb once,
 * later (value NULL when nothing is stored), or not 0 and never calls cb.
 * put() may do nothing. Both NULL: no shared cache.
 */
typedef void (*policy_remote_cb)(void *cbarg, int status, const char *value, size_t len);
struct policy_remote {
    void *arg;
    int (*get)(void *arg, const char *key, policy_remote_cb cb, void *cbarg);
    void (*put)(void *arg, const char *key, const char *value, size_t len, int64_t ttl_s);
};

struct policy_options {
    const char *cache_path;      /* LMDB file; NULL: memory only */
    const char *ca_file;         /* trust store for the policy host; NULL or
                                    "": the system store (the same store as
                                    for MX certificates) */
    uint16_t https_port;         /* 443 */
    uint32_t fetch_timeout_ms;   /* whole fetch, from TCP connect to the
                                    last byte: 60000 */
    uint32_t connect_timeout_ms; /* each TCP connect: 10000 */
    size_t max_policy_size;      /* body bound: 65536 */
    uint32_t txt_check_s;        /* a cached policy is used without any DNS
                                    for this long after its last TXT check:
                                    300 */
    uint32_t refresh_s;          /* policy_refresh_due(): recheck policies
                                    whose TXT check is older than this, and
                                    refetch those expiring within it (or
                                    past half their max_age): 86400 */
    uint32_t retry_after_s;      /* after a failed fetch, the same id is not
                                    fetched again for this long: 300 (RFC
                                    8461 3.3: at least 5 minutes) */
    const char *user_agent;      /* "Convoy/VERSION" */
    int64_t (*now)(void);        /* wall clock in seconds; NULL: time(2) */
    struct policy_remote remote; /* a cache shared with other nodes; zero: none */
};

/* The defaults above. */
void policy_options_default(struct policy_options *o);

/* What applies to a domain. */
enum policy_source {
    POLICY_SRC_NONE = 0, /* no policy applies */
    POLICY_SRC_CACHE,    /* a cached policy */
    POLICY_SRC_FETCHED,  /* fetched during this lookup */
};

/* What a lookup changed, comparing the whole policy (not only its id) with
 * the one cached before it. */
enum policy_change {
    POLICY_CHANGE_NONE = 0, /* nothing fetched, or the same policy again */
    POLICY_CHANGE_NEW,      /* fetched where no policy was cached */
    POLICY_CHANGE_ID,       /* fetched under a new TXT id */
    POLICY_CHANGE_CONTENT,  /* fetched under the same id, yet different: the
                               domain fixed its policy without a new id */
};
/* "none", "new", "id", "content". */
const char *policy_change_name(enum policy_change c);

struct policy_result {
    const char *domain;
    bool have_policy; /* a policy applies (its mode may still be none) */
    const struct sts_policy *policy;
    const char *id;
    int64_t fetched, expires;
    enum policy_source source;
    /* What went wrong during this discovery, even when a cached policy
     * still applies (for TLS-RPT and the log). NONE and "" otherwise. */
    enum policy_failure failure;
    const char *error;
    /* Did this lookup replace the cached policy with a different one? */
    enum policy_change change;
};

typedef void (*policy_cb)(void *arg, const struct policy_result *r);

/*
 * Create the engine on loop, using dns for lookups (not owned; it must
 * outlive the engine). Opens the cache and builds its own TLS client
 * context from o->ca_file. 0 or an error with why.
 */
int policy_new(uv_loop_t *loop, struct dns *dns, const struct policy_options *o,
               struct policy **out, char *why, size_t why_size);
/*
 * Free the engine: pending requests end without their callbacks; fetches
 * in progress are dropped (their handles close; the loop must run
 * afterwards). NULL does nothing. Not from inside a policy callback.
 */
void policy_free(struct policy *p);

/*
 * Reconfigure a running engine (convoyd's reload), in two steps so that a
 * reload can check everything before it changes anything:
 * policy_update_prepare() checks o and reads the trust store o->ca_file
 * again (even under an unchanged name: the file may have been replaced);
 * then either policy_update_apply() (cannot fail; consumes u) or
 * policy_update_free(). What changes: every field of o but cache_path,
 * user_agent and now. The cache stays open with every policy in it;
 * lookups and fetches in progress finish under the settings they started
 * with (a fetch keeps its own reference to the old TLS context); new
 * lookups, fetches, back-offs and refreshes use the new ones.
 * prepare returns 0; ERR_INVAL when o->cache_path differs from the
 * engine's (the cache file cannot move under a running engine); ERR_TLS
 * when the trust store cannot be loaded; ERR_NOMEM. why says which.
 */
struct policy_update;
int policy_update_prepare(struct policy *p, const struct policy_options *o,
                          struct policy_update **u, char *why, size_t why_size);
void policy_update_apply(struct policy *p, struct policy_update *u);
void policy_update_free(struct policy_update *u);

/*
 * The policy for a domain (RFC 8461 5.1). The callback runs exactly once,
 * never before policy_get() returns, unless policy_cancel() or
 * policy_free() comes first. domain is normalised (case, trailing dot,
 * IDNA A-label).
 *  - A cached, unexpired policy whose TXT record was checked within
 *    txt_check_s answers without any network I/O; when the check is due the
 *    answer still comes from the cache at once and a TXT check runs in the
 *    background (a changed id makes the next lookup use the new policy).
 *  - Otherwise TXT lookup, then a fetch if the id is new, the cached policy
 *    expired, or there is none (at most one fetch per id per retry_after_s
 *    after a failure); concurrent lookups of one domain share that work.
 *  - A failed discovery or fetch never removes a cached policy: an
 *    unexpired one applies (have_policy, SRC_CACHE, failure set).
 * Returns 0, ERR_INVAL (bad domain: the callback does not run), ERR_NOMEM.
 * req (may be NULL) receives a handle for policy_cancel().
 */
int policy_get(struct policy *p, const char *domain, policy_cb cb, void *arg,
               struct policy_req **req);

/*
 * RFC 8461 5: after an enforce policy failed a delivery (and before such a
 * failure becomes final), look for a newer policy: a TXT lookup now, and a
 * fetch even if the id did not change. Rate-limited per domain: such a
 * forced refetch of an unchanged id happens at most once per retry_after_s
 * (sts_fetch_retry_time), and never within retry_after_s of a failed fetch
 * of that id (RFC 8461 3.3); otherwise the cached policy answers. The
 * result's change compares the whole policy with the cached one, so a
 * domain that fixed its policy under the same id is seen. Same callback
 * rules as policy_get().
 */
int policy_recheck(struct policy *p, const char *domain, policy_cb cb, void *arg,
                   struct policy_req **req);

/* Cancel a request whose callback has not run: it never will. */
void policy_cancel(struct policy_req *req);

/*
 * Proactive refresh (RFC 8461 10.2 / 5.1): for unexpired cached policies
 * whose TXT check is older than refresh_s, start a background check; for
 * those near expiry (within refresh_s, or in the second half of their
 * max_age if that is sooner) a refetch even if the id is unchanged. Never
 * within retry_after_s of the last attempt; at most max_jobs. Records with
 * no policy, or one expired for 30 days, and no attempt for as long, are
 * deleted. Returns how many jobs were started. Call it periodically (e.g.
 * each minute) from the daemon.
 */
size_t policy_refresh_due(struct policy *p, size_t max_jobs);

/* Discoveries in progress (for shutdown and tests). */
size_t policy_active(const struct policy *p);

/* ==== a one-off fetch (convoyctl sts check / refresh) ==================== */

/* Everything one discovery saw, step by step. */
struct policy_probe {
    char domain[POLICY_NAME_MAX];
    /* TXT */
    bool txt_found; /* at least one v=STSv1 record */
    bool txt_valid;
    char txt_id[POLICY_ID_MAX + 1];
    char txt_error[256];
    /* fetch */
    bool fetched; /* an acceptable HTTP response arrived */
    bool policy_valid;
    struct sts_policy policy;
    char *text;
    size_t text_len;
    int http_status;
    enum policy_failure failure;
    char policy_error[256];
    struct tls_facts tls; /* the policy host's TLS facts */
    bool tls_done;
};

typedef void (*policy_probe_cb)(void *arg, const struct policy_probe *r);

/*
 * Discover and fetch the policy of a domain now, ignoring and not touching
 * the cache (fetch_anyway: fetch even if the TXT record is missing or
 * invalid). For admin tools. The callback runs exactly once, never before
 * the call returns; the result is the probe's own (valid during the
 * callback). Let a probe finish before policy_free().
 */
int policy_probe(struct policy *p, const char *domain, bool fetch_anyway, policy_probe_cb cb,
                 void *arg);
void policy_probe_clear(struct policy_probe *r);

/*
 * convoyctl sts refresh: a TXT lookup and a fetch now, whatever the cache
 * and the backoff say; the result is stored as any fetch is (a failure
 * never removes the cached policy). Same callback rules as policy_get().
 */
int policy_refresh(struct policy *p, const char *domain, policy_cb cb, void *arg,
                   struct policy_req **req);

/* The engine's cache (NULL when memory only), for admin tools. */
struct policy_cache *policy_cache(struct policy *p);

/* ==== HTTPS POST (TLS-RPT reports to an https: rua, RFC 8460 5.2) ========= */

/* "https://host[:port][/path][?query]" -> host, port (443), path ("/..."
 * with the query, without a fragment). 0, ERR_INVAL or ERR_TOOBIG. */
int policy_https_url_parse(const char *url, char *host, size_t host_size, uint16_t *port,
                           char *path, size_t path_size);

struct policy_post_params {
    uv_loop_t *loop;
    struct dns *dns;     /* the host's addresses */
    struct tls_ctx *tls; /* client context: the certificate is verified for
                            the URL's host against its trust store */
    const char *url;
    uint16_t port; /* 0: the URL's (tests point every host at one port) */
    const char *content_type;
    const void *body; /* copied */
    size_t len;
    uint32_t timeout_ms; /* the whole exchange; 0: 60 s */
    const char *user_agent;
};
struct policy_post_result {
    int status;      /* 0: a 2xx came back; else an enum err */
    int http_status; /* 0 when no response */
    const char *why; /* for the log */
};
typedef void (*policy_post_cb)(void *arg, const struct policy_post_result *r);
/* POST the body; cb runs once, later, on the loop. 0, or an error (a bad
 * URL: ERR_INVAL) and cb never runs. */
int policy_post(const struct policy_post_params *pp, policy_post_cb cb, void *arg);

/* ==== TLS-RPT (RFC 8460): records, the store, reports ===================== */

/*
 * How the daemon is to use this (delivery/ records, mta/ sends):
 *  - With tlsrpt_enable: s = tlsrpt_store_open(<queue_directory>/
 *    TLSRPT_STORE_FILE, false, ...) at start; tlsrpt_record_session() once
 *    per session from the delivery verdict; tlsrpt_store_sync() from a
 *    one-minute timer; tlsrpt_store_close() at exit.
 *  - After midnight UTC (plus a random delay), for each (day, domain) of
 *    tlsrpt_store_each(s, yesterday): TXT _smtp._tls.DOMAIN ->
 *    tlsrpt_txt_select(); no usable record: tlsrpt_store_delete(). Else
 *    tlsrpt_report_build(s, day, domain, info, sum.reports, 0, &rep), then
 *    for each rua: https -> POST rep.gz (Content-Type
 *    application/tlsrpt+gzip); mailto -> tlsrpt_mailto_address(),
 *    tlsrpt_mail_build() with rep, DKIM-sign, queue it (sender
 *    tlsrpt_sender, TLS-Required: No honoured, not itself recorded). When
 *    every rua is done or given up: tlsrpt_store_delete(). Once a day:
 *    tlsrpt_store_prune(s, a few days back).
 *  - In a fleet (shared_state) each node also publishes its records
 *    (tlsrpt_store_on_change(), tlsrpt_store_record()); the node that
 *    claims a report sums every node's record (tlsrpt_record_sum()), keeps
 *    the sum (tlsrpt_store_put_fleet()) and sends it; a node that reports
 *    alone keeps zero counts (tlsrpt_store_zero()).
 */

/*
 * The reporting policy: the TXT RRset at _smtp._tls.DOMAIN (RFC 8460 3).
 *
 *   tlsrpt-record    = %s"v=TLSRPTv1" 1*(field-delim tlsrpt-field) [field-delim]
 *   field-delim      = *WSP ";" *WSP
 *   tlsrpt-field     = tlsrpt-rua / tlsrpt-extension     ; rua required
 *   tlsrpt-rua       = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
 *   tlsrpt-extension = tlsrpt-ext-name "=" tlsrpt-ext-value
 *   tlsrpt-ext-name  = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
 *   tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
 *
 * There is no "!size" suffix (that is DMARC's rua): a URI's commas,
 * exclamation points and semicolons must be percent-encoded.
 */
#define TLSRPT_RUA_MAX 16   /* URIs kept from one record; more are ignored */
#define TLSRPT_URI_MAX 1024 /* with the NUL; a longer URI makes the record invalid */

struct tlsrpt_record {
    size_t n_rua;                             /* mailto: and https: URIs, in record order */
    char rua[TLSRPT_RUA_MAX][TLSRPT_URI_MAX]; /* as published (scheme as written) */
    size_t n_ignored;                         /* URIs of other schemes, or past the bound */
};

/* Is this TXT record (strings concatenated) a TLS-RPT record at all: does it
 * begin with "v=TLSRPTv1" followed by ';', a space, a tab or its end?
 * Others are discarded before counting (RFC 8460 3). */
bool tlsrpt_txt_is_tlsrpt(const char *rec, size_t len);

/*
 * Parse one record by the grammar above, exactly (case-sensitive "v=" and
 * "rua="). Extensions are checked for syntax and ignored; several rua
 * fields accumulate; duplicate URIs are kept once; URIs other than mailto:
 * and https: (scheme case-insensitive) are counted in n_ignored. 0 when at
 * least one mailto: or https: URI remains; ERR_INVAL otherwise, with the
 * reason in why ("rua missing", "no mailto: or https: URI in rua", ...).
 */
int tlsrpt_txt_parse(const char *rec, size_t len, struct tlsrpt_record *out, char *why,
                     size_t why_size);

/*
 * RFC 8460 3 over a whole RRset: discard records that are not TLS-RPT
 * records, exactly one must remain and be usable. 0 and *out; ERR_NOTFOUND
 * when no record is a TLS-RPT record; ERR_INVAL when several are, or the
 * one is not usable (why says which).
 */
int tlsrpt_txt_select(const char *const *recs, const size_t *lens, size_t n,
                      struct tlsrpt_record *out, char *why, size_t why_size);

/* The address of a mailto: rua URI (RFC 6068: up to '?', percent-decoded).
 * 0, or ERR_INVAL when it is not a mailto: URI with one local@domain. */
int tlsrpt_mailto_address(const char *uri, char *out, size_t size);

/* RFC 8460 4.3 result types (the IANA "STARTTLS Validation Result Types"). */
enum tlsrpt_result {
    TLSRPT_SUCCESS = 0, /* a successful session, not a result type */
    /* 4.3.1 negotiation failures */
    TLSRPT_STARTTLS_NOT_SUPPORTED,
    TLSRPT_CERTIFICATE_HOST_MISMATCH,
    TLSRPT_CERTIFICATE_EXPIRED,
    TLSRPT_CERTIFICATE_NOT_TRUSTED,
    TLSRPT_VALIDATION_FAILURE, /* also 4.3.3: any failure not covered above */
    /* 4.3.2.1 DANE */
    TLSRPT_TLSA_INVALID,
    TLSRPT_DNSSEC_INVALID,
    TLSRPT_DANE_REQUIRED,
    /* 4.3.2.2 MTA-STS */
    TLSRPT_STS_POLICY_FETCH_ERROR,
    TLSRPT_STS_POLICY_INVALID,
    TLSRPT_STS_WEBPKI_INVALID,
};
#define TLSRPT_RESULT_LAST TLSRPT_STS_WEBPKI_INVALID
/* "starttls-not-supported", ...; NULL for TLSRPT_SUCCESS or out of range. */
const char *tlsrpt_result_name(enum tlsrpt_result r);
/* The result type of a name; ERR_INVAL for an unknown one. */
int tlsrpt_result_from_name(const char *name, enum tlsrpt_result *out);
/* The result type of a policy discovery failure (POLICY_FAIL_NONE gives
 * TLSRPT_SUCCESS). */
enum tlsrpt_result tlsrpt_result_from_policy_failure(enum policy_failure f);
/* The result type of a TLS failure as tls/ reports it in struct tls_facts
 * (TLS_FAIL_HANDSHAKE and TLS_FAIL_VALIDATION give validation-failure, RFC
 * 8460 4.3.3; TLS_FAIL_NONE gives TLSRPT_SUCCESS). For MTA-STS, judge by
 * facts.failure whenever the policy asked for verification, also in testing
 * mode where the session went on unverified (RFC 8461 5: report it). */
enum tlsrpt_result tlsrpt_result_from_tls_failure(enum tls_failure f);

/* RFC 8460 4.4 policy-type. */
enum tlsrpt_policy_type {
    TLSRPT_POLICY_NO_POLICY = 0, /* "no-policy-found" */
    TLSRPT_POLICY_STS,           /* "sts" */
    TLSRPT_POLICY_TLSA,          /* "tlsa" */
};
const char *tlsrpt_policy_type_name(enum tlsrpt_policy_type t);

/*
 * One session's result, as the delivery verdict knows it. The delivery
 * engine calls tlsrpt_record_session() exactly once per SMTP session
 * (connection to one MX address) that negotiated, or tried to negotiate,
 * TLS to a recipient domain, when the session's TLS outcome is known: a
 * session that carried 50 messages counts once (RFC 8460 counts sessions),
 * and one that failed before STARTTLS with a TLS cause counts once as a
 * failure. Not for sessions that carry TLS-RPT reports themselves (RFC 8460
 * 5.3: no loops), nor for transient network failures (4.3.4: connect
 * refused, timeouts before TLS) which need not be reported.
 * Strings may be NULL or "" (member left out of the report).
 */
struct tlsrpt_session_result {
    const char *policy_domain; /* the recipient domain; normalised by the call */
    int64_t time;              /* seconds since the epoch: picks the UTC day */
    /* Idempotence key (see tlsrpt_record_session()); NULL: none. */
    const char *session_id;
    enum tlsrpt_policy_type policy_type;
    /* STS: the applied policy; policy-string is rendered from it
     * ("version: STSv1", "mode: M", "mx: P"..., "max_age: N") and mx-host
     * is its mx patterns. */
    const struct sts_policy *sts;
    /* Other types (TLSA later), or to override the rendering above. */
    const char *const *policy_strings;
    size_t n_policy_strings;
    const char *const *mx_hosts;
    size_t n_mx_hosts;
    enum tlsrpt_result result; /* TLSRPT_SUCCESS or the failure */
    /* Failure details (ignored on success). */
    const char *sending_mta_ip;        /* our source address */
    const char *receiving_mx_hostname; /* the MX host name */
    const char *receiving_mx_helo;     /* its EHLO name, when known */
    const char *receiving_ip;          /* the address we connected to */
    const char *failure_reason_code;   /* e.g. the TLS library's error text */
};

/*
 * The store: <queue_directory>/tlsrpt.lmdb, its own LMDB environment (one
 * file, MDB_NOSUBDIR), so a busy store never holds the queue's or the
 * policy cache's writer lock. Per UTC day and policy domain one record with
 * the counts per applied policy and the failure details. Readers
 * (convoyctl) may open it while convoyd writes.
 *
 * Durability: written with MDB_NOSYNC; tlsrpt_store_sync() (the daemon
 * calls it every minute and at exit) flushes. A killed process loses
 * nothing (the pages are in the kernel); a power loss may lose the counts
 * since the last sync. Never double counts: every session is one write
 * transaction, which LMDB commits atomically or not at all.
 *
 * Bounds: TLSRPT_MAX_DOMAINS policy domains per day, TLSRPT_MAX_POLICIES
 * policies per domain and day, TLSRPT_MAX_DETAILS failure-detail rows per
 * policy. Past a bound the session still counts where it can (a failure
 * past the detail bound counts in total-failure-session-count) and a
 * "dropped" counter says how much was left out.
 */
#define TLSRPT_STORE_FILE "tlsrpt.lmdb"
#define TLSRPT_STORE_VERSION 1
#define TLSRPT_MAX_DOMAINS 20000
#define TLSRPT_MAX_POLICIES 8
#define TLSRPT_MAX_DETAILS 100
#define TLSRPT_SESSION_ID_MAX 128
/* "YYYY-MM-DD" and its NUL. */
#define TLSRPT_DAY_SIZE 11

struct tlsrpt_store;

/* Open (creating unless readonly) the store at path. why gets the reason.
 * ERR_VERSION for a file of another layout version. */
int tlsrpt_store_open(const char *path, bool readonly, struct tlsrpt_store **out, char *why,
                      size_t why_size);
/* Sync (unless readonly) and close. NULL is fine. */
void tlsrpt_store_close(struct tlsrpt_store *s);
/* Flush committed records to disk (fsync). */
int tlsrpt_store_sync(struct tlsrpt_store *s);

/*
 * Count one session. One write transaction: the counters of the session's
 * (day, domain, policy) and, for a failure, its failure-detail row (result
 * type, sending-mta-ip, receiving-mx-hostname, receiving-ip,
 * failure-reason-code; receiving-mx-helo kept from the first session of
 * the row).
 * With a session_id, the same transaction stores the key (day, session_id):
 * a second call with the same key that day changes nothing and returns
 * ERR_EXISTS. That makes a retried call (after an error whose commit state
 * is unknown, or a replay of a journal) safe; session ids must be unique
 * per attempt, e.g. "<boot-time-ms>.<pid>.<connection-serial>".
 * Returns 0, ERR_EXISTS, ERR_INVAL (no or bad domain, bad result),
 * ERR_TOOBIG (the domain bound was reached: counted as dropped for the
 * day), ERR_FULL, ERR_IO.
 */
int tlsrpt_record_session(struct tlsrpt_store *s, const struct tlsrpt_session_result *r);
/* Called after each committed tlsrpt_record_session() (and
 * tlsrpt_store_zero()) with the day and (normalised) domain: a fleet
 * publishes the changed record. cb
 * NULL removes it. The callback must not write to the store. */
typedef void (*tlsrpt_change_cb)(void *arg, const char *day, const char *domain);
void tlsrpt_store_on_change(struct tlsrpt_store *s, tlsrpt_change_cb cb, void *arg);
/* The stored record of (day, domain) as its JSON text (the layout of
 * tlsrpt_store.c), appended to out: what a node publishes to its fleet.
 * ERR_NOTFOUND; ERR_EXISTS when the record holds a fleet's sum. */
int tlsrpt_store_record(struct tlsrpt_store *s, const char *day, const char *domain,
                        struct buf *out);
/*
 * Replace the record of (day, domain) by a fleet's sum (the text of
 * tlsrpt_record_sum()) that is reported with number seq: the report is
 * then built from the store as for one node (summary.reports is seq,
 * summary.fleet is true), and so are its retries after a restart.
 * tlsrpt_store_record() no longer gives it out. One committed transaction.
 */
int tlsrpt_store_put_fleet(struct tlsrpt_store *s, const char *day, const char *domain,
                           const char *sum, size_t len, uint32_t seq);
/*
 * The sum of n records of one (day, domain) (texts as
 * tlsrpt_store_record() gives them; several nodes' counts): policies that
 * are the same (type, policy-string, mx-host) add their counts, failure
 * rows that are the same add theirs; the store's bounds hold for the sum
 * (what does not fit counts as dropped). A record that does not parse is
 * skipped. The sum's text appended to out; ERR_NOTFOUND when no record
 * was usable.
 */
int tlsrpt_record_sum(const char *const *recs, const size_t *lens, size_t n, struct buf *out);

/* The UTC day of t as "YYYY-MM-DD"; the start of a day (00:00:00 UTC);
 * tlsrpt_day_parse: 0 or ERR_INVAL. */
void tlsrpt_day_of(int64_t t, char out[TLSRPT_DAY_SIZE]);
int tlsrpt_day_parse(const char *day, int64_t *start);

/* One (day, domain) summary for lists. */
struct tlsrpt_summary {
    char day[TLSRPT_DAY_SIZE];
    char domain[POLICY_NAME_MAX];
    uint64_t successful, failed;
    size_t n_policies;
    uint64_t dropped; /* failure rows or policies left out by the bounds */
    uint32_t reports; /* reports made so far for this day (report-id sequence) */
    bool fleet;       /* the record holds a fleet's sum (tlsrpt_store_put_fleet()) */
};
typedef int (*tlsrpt_summary_cb)(void *arg, const struct tlsrpt_summary *sum);
/* Every (day, domain) of day (NULL: every day), in (day, domain) order. A
 * non-zero return of cb stops and is returned. */
int tlsrpt_store_each(struct tlsrpt_store *s, const char *day, tlsrpt_summary_cb cb, void *arg);
/* Sessions that could not be counted on day because of TLSRPT_MAX_DOMAINS. */
uint64_t tlsrpt_store_dropped(struct tlsrpt_store *s, const char *day);

/*
 * Move (day, domain) to its next report sequence number: *seq gets the
 * number the report just sent used (summary.reports before the call), and
 * the next report of that day gets one more. Call it after a partial-day
 * report went out (convoyctl tlsrpt send --date today), so the full day
 * later gets its own report-id; after a full day's report call
 * tlsrpt_store_delete() instead. Building a report does not change the
 * number, so a report rebuilt after a crash before the delete carries the
 * same report-id and a collector can tell it is a resend. One committed
 * transaction. ERR_NOTFOUND when there is no record.
 */
int tlsrpt_store_next_seq(struct tlsrpt_store *s, const char *day, const char *domain,
                          uint32_t *seq);
/*
 * A node of a fleet reported (day, domain) alone (its shared state was
 * away): keep the record with no sessions (and the next report sequence)
 * instead of dropping it, so the node publishes zero counts for it when it
 * reconnects and no fleet report counts its sessions again. Calls the
 * change callback. ERR_NOTFOUND.
 */
int tlsrpt_store_zero(struct tlsrpt_store *s, const char *day, const char *domain);
/* The report is sent (every rua handed over, or given up): drop the
 * record. ERR_NOTFOUND. */
int tlsrpt_store_delete(struct tlsrpt_store *s, const char *day, const char *domain);
/* Drop every day before before_day ("YYYY-MM-DD"), records, session keys
 * and counters: the bound on what is kept when reports cannot be sent.
 * Returns how many (day, domain) records went, or an error. */
int tlsrpt_store_prune(struct tlsrpt_store *s, const char *before_day);

/* What a report says about its sender (RFC 8460 4.4). */
struct tlsrpt_report_info {
    const char *organization_name;
    const char *contact_info; /* an email address */
    const char *submitter;    /* a domain: in the report-id, file name, Subject */
    /* NULL for a single relay's or a fleet's report; a node's name when a
     * node of a fleet reports its own counts alone (shared state away):
     * it goes into the report-id and the file name's unique-id, so two
     * nodes' reports never share one. */
    const char *node;
};

/*
 * The RFC 8460 4 JSON report of (day, domain): organization-name,
 * date-range {start-datetime, end-datetime}, contact-info, report-id,
 * policies [{policy {policy-type, policy-string, policy-domain, mx-host},
 * summary {total-successful-session-count, total-failure-session-count},
 * failure-details [...]}]. The range is the UTC day, 00:00:00Z to
 * 23:59:59Z; when end is non-zero and within the day (a partial report,
 * convoyctl tlsrpt send --date today) the range ends at end. report-id is
 * tlsrpt_report_id() of seq. Appended to out (compact JSON unless pretty).
 * ERR_NOTFOUND when the store has nothing for (day, domain).
 */
int tlsrpt_report_json(struct tlsrpt_store *s, const char *day, const char *domain,
                       const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                       bool pretty, struct buf *out);
/* The same report from a record's text (tlsrpt_store_record(),
 * tlsrpt_record_sum()) instead of the store: ERR_INVAL when it does not
 * parse. */
int tlsrpt_report_json_record(const char *rec, size_t len, const char *day, const char *domain,
                              const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                              bool pretty, struct buf *out);
/* "YYYYMMDD.SEQ.DOMAIN@SUBMITTER": unique per (day, report, domain,
 * submitter), usable as a Message-ID and in Subject's Report-ID: <...>. */
void tlsrpt_report_id(const char *day, uint32_t seq, const char *domain, const char *submitter,
                      char *out, size_t size);
/* The report-id of a report with info: as tlsrpt_report_id(), with
 * info->node (when set) as "YYYYMMDD.SEQ.NODE.DOMAIN@SUBMITTER". */
void tlsrpt_report_id_of(const char *day, uint32_t seq, const char *domain,
                         const struct tlsrpt_report_info *info, char *out, size_t size);
/* A node name as a label: letters and digits kept, anything else '-', at
 * most 63 characters. */
void tlsrpt_node_tag(const char *node, char *out, size_t size);
/* RFC 8460 5.1: "submitter!policy-domain!begin!end[!unique-id].json.gz"
 * (begin and end in seconds since the epoch; unique_id NULL or "" leaves it
 * out; it must be a MIME token). 0 or ERR_INVAL/ERR_TOOBIG. */
int tlsrpt_report_filename(const char *submitter, const char *domain, int64_t begin, int64_t end,
                           const char *unique_id, char *out, size_t size);
/* RFC 8460 5.2: gzip (RFC 1952) data into out (appended). */
int tlsrpt_gzip(const void *data, size_t n, struct buf *out);

/*
 * Everything one report needs on its way out, built from the store: the
 * compact JSON, its gzip (the body of an https POST with Content-Type
 * application/tlsrpt+gzip, and the mail attachment), the report-id, the
 * file name (seq > 0 adds "!seq" as the unique-id) and the range.
 * Arguments as tlsrpt_report_json(). Free with tlsrpt_report_clear().
 */
struct tlsrpt_report {
    char report_id[POLICY_NAME_MAX * 2 + 32];
    char filename[POLICY_NAME_MAX * 2 + 64];
    int64_t begin, end; /* seconds, as in date-range */
    struct buf json;
    struct buf gz;
};
int tlsrpt_report_build(struct tlsrpt_store *s, const char *day, const char *domain,
                        const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                        struct tlsrpt_report *out);
/* The same from a record's text (a fleet's sum). */
int tlsrpt_report_build_record(const char *rec, size_t len, const char *day, const char *domain,
                               const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                               struct tlsrpt_report *out);
void tlsrpt_report_clear(struct tlsrpt_report *r);

/*
 * RFC 8460 5.3: the report as a mail message (CRLF line ends, ready to
 * queue): From, To, Date, Message-ID, Subject "Report Domain: D Submitter:
 * S Report-ID: <ID>", TLS-Report-Domain, TLS-Report-Submitter,
 * TLS-Required: No (RFC 8689: the report about a broken TLS setup must not
 * be held back by it), MIME-Version, Content-Type multipart/report;
 * report-type="tlsrpt", a short text/plain part, and the gzipped report as
 * an application/tlsrpt+gzip attachment (base64) named filename.
 * DKIM (RFC 8460 5.3: reports must be signed, without l=) is the caller's:
 * sign the returned message with dkim/ for the submitter domain and put the
 * DKIM-Signature header in front; nothing here needs to change for it.
 */
struct tlsrpt_mail {
    const char *from; /* tlsrpt_sender, an address */
    const char *to;   /* the rua address (tlsrpt_mailto_address()) */
    const char *policy_domain;
    const char *submitter;
    const char *report_id;
    const char *filename; /* tlsrpt_report_filename() */
    const void *gz;       /* the gzipped report */
    size_t gz_len;
    int64_t date;         /* Date: header, seconds */
    int64_t begin, end;   /* the report's range, for the text part */
    const char *boundary; /* NULL: derived from report_id */
};
int tlsrpt_mail_build(const struct tlsrpt_mail *m, struct buf *out);

#endif
