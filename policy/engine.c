/*
 * engine.c - the MTA-STS engine: which policy applies to a domain now
 * (RFC 8461 3 and 5.1), with a persistent cache and one discovery per
 * domain at a time.
 *
 * A lookup (policy_get):
 *  1. A cached, unexpired policy answers at once, without network I/O. If
 *     its TXT record was last checked more than txt_check_s ago, a
 *     background job checks it (the DNS module's TTL cache bounds the
 *     queries further); a changed id is fetched by that job and applies to
 *     later lookups. This is the "optionally check for a new policy" of
 *     5.1 step 1, done without delaying delivery.
 *  2. Otherwise the lookup joins the domain's job, or starts one: TXT
 *     lookup of _mta-sts.DOMAIN (3.1), then a fetch (3.3) if the id is new,
 *     the cached policy expired, or there is none - but never within
 *     retry_after_s of a failed fetch of the same id (3.3).
 *  3. A job that ends with no live policy falls back to an unexpired
 *     cached one (3.3, 5.1); only with none does the domain have no policy.
 *
 * Invariants:
 *  - At most one job per domain; every waiter of a job gets its callback
 *    exactly once, after policy_get() returned.
 *  - The cache is written only when a fetch ends (success: the new policy;
 *    failure: the attempt fields only, never the policy).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy_int.h"

#define BUCKETS 1024

struct job;

struct dom {
    struct dom *next;
    char domain[POLICY_NAME_MAX];
    int64_t txt_checked; /* last definitive TXT answer (seconds) */
    int64_t rechecked;   /* last forced refetch for policy_recheck() (seconds) */
    struct job *job;
    bool mem_set; /* memory-only mode: the entry lives here */
    struct policy_entry mem;
};

enum job_kind { JOB_NORMAL, JOB_RECHECK, JOB_REFRESH, JOB_ADMIN };

struct policy_req {
    struct policy_req *next;
    struct policy *p;
    struct dom *d;
    policy_cb cb;
    void *arg;
    bool cancelled;
};

struct job {
    struct policy *p;
    struct dom *d;
    enum job_kind kind;
    struct dns_query *q;
    struct fetch *f;
    char txt_id[POLICY_ID_MAX + 1];
    struct policy_req *waiters;
    enum policy_failure failure;
    char error[256];
    enum policy_change change;
    /* A get() of the shared cache in flight (its ticket), and whether the
     * body in fetch_done() came from there. */
    struct remote_ticket *remote;
    bool from_remote;
};

/* Outlives its job: policy_free() orphans it (j = NULL) and the remote
 * callback frees it. */
struct remote_ticket {
    struct job *j;
};

struct probe_state {
    struct policy *p;
    struct policy_probe r;
    bool fetch_anyway;
    policy_probe_cb cb;
    void *arg;
    uv_idle_t idle; /* only used when the probe ends before starting */
};

struct policy {
    uv_loop_t *loop;
    struct dns *dns;
    struct policy_options o;
    char *ca_file;
    char *user_agent;
    char *cache_path; /* as opened; NULL: memory only */
    struct tls_ctx *tls;
    struct policy_cache *cache;
    struct dom *table[BUCKETS];
    struct policy_req *ready; /* answered from the cache, delivered by idle */
    struct policy_req **ready_tail;
    uv_idle_t idle;
    size_t jobs;
};

static int64_t default_now(void)
{
    return (int64_t)time(NULL);
}

void policy_options_default(struct policy_options *o)
{
    memset(o, 0, sizeof(*o));
    o->https_port = 443;
    o->fetch_timeout_ms = 60000;
    o->connect_timeout_ms = 10000;
    o->max_policy_size = 65536;
    o->txt_check_s = 300;
    o->refresh_s = 86400;
    o->retry_after_s = 300;
    o->user_agent = "Convoy/" CONVOY_VERSION;
}

static int64_t now_s(const struct policy *p)
{
    return p->o.now ? p->o.now() : default_now();
}

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % BUCKETS;
}

static struct dom *dom_get(struct policy *p, const char *domain, bool create)
{
    unsigned h = hash(domain);
    for (struct dom *d = p->table[h]; d; d = d->next)
        if (strcmp(d->domain, domain) == 0)
            return d;
    if (!create)
        return NULL;
    struct dom *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    str_copy(d->domain, domain, sizeof(d->domain));
    d->next = p->table[h];
    p->table[h] = d;
    return d;
}

/* The stored entry of a domain; an empty one (have_policy false) if none. */
static void entry_load(struct policy *p, struct dom *d, struct policy_entry *e)
{
    memset(e, 0, sizeof(*e));
    if (p->cache) {
        int rc = policy_cache_get(p->cache, d->domain, e);
        if (rc != 0 && rc != ERR_NOTFOUND)
            log_warn("sts", "policy cache read failed domain=%s: %s", d->domain, err_str(rc));
        if (rc != 0)
            memset(e, 0, sizeof(*e));
    } else if (d->mem_set) {
        *e = d->mem;
        e->text = NULL;
        memset(&e->policy, 0, sizeof(e->policy));
        if (d->mem.text) {
            e->text = strdup(d->mem.text);
            e->text_len = d->mem.text_len;
        }
        if (policy_sts_copy(&e->policy, &d->mem.policy) != 0 || (d->mem.text && !e->text)) {
            policy_entry_clear(e);
        }
    }
    str_copy(e->domain, d->domain, sizeof(e->domain));
}

static void entry_store(struct policy *p, struct dom *d, const struct policy_entry *e)
{
    if (p->cache) {
        int rc = policy_cache_put(p->cache, e);
        if (rc != 0)
            log_warn("sts", "policy cache write failed domain=%s: %s", d->domain, err_str(rc));
        return;
    }
    struct policy_entry copy = *e;
    copy.text = e->text ? strdup(e->text) : NULL;
    if (policy_sts_copy(&copy.policy, &e->policy) != 0) {
        free(copy.text);
        return;
    }
    policy_entry_clear(&d->mem);
    d->mem = copy;
    d->mem_set = true;
}

/* Fill a result from an entry as it applies now. */
static void result_from(struct policy_result *r, const struct policy_entry *e, int64_t now,
                        enum policy_source src, enum policy_failure f, const char *error)
{
    memset(r, 0, sizeof(*r));
    r->domain = e->domain;
    r->failure = f;
    r->error = error ? error : "";
    /* A policy fetched just now applies to this lookup even with max_age 0
     * (it is then never reused from the cache). */
    if (policy_entry_valid(e, now) || (src == POLICY_SRC_FETCHED && e->have_policy)) {
        r->have_policy = true;
        r->policy = &e->policy;
        r->id = e->id;
        r->fetched = e->fetched;
        r->expires = e->expires;
        r->source = src == POLICY_SRC_NONE ? POLICY_SRC_CACHE : src;
    } else {
        r->source = POLICY_SRC_NONE;
        r->id = "";
    }
}

/* ---- delivery of immediate answers ----------------------------------------- */

static void idle_cb(uv_idle_t *h)
{
    struct policy *p = h->data;
    struct policy_req *list = p->ready;
    p->ready = NULL;
    p->ready_tail = &p->ready;
    uv_idle_stop(&p->idle);
    while (list) {
        struct policy_req *r = list;
        list = r->next;
        if (!r->cancelled) {
            struct policy_entry e;
            entry_load(p, r->d, &e);
            struct policy_result res;
            result_from(&res, &e, now_s(p), POLICY_SRC_CACHE, POLICY_FAIL_NONE, NULL);
            r->cb(r->arg, &res);
            policy_entry_clear(&e);
        }
        free(r);
    }
}

static void ready_push(struct policy *p, struct policy_req *r)
{
    r->next = NULL;
    *p->ready_tail = r;
    p->ready_tail = &r->next;
    uv_idle_start(&p->idle, idle_cb);
}

/* ---- jobs -------------------------------------------------------------------- */

/* A domain without a cached policy needs no memory between lookups when the
 * cache is on disk: forget it, so the table does not grow with every domain
 * ever mailed. Kept while a request still points at it. */
static void dom_maybe_drop(struct policy *p, struct dom *d, const struct policy_entry *e)
{
    if (!p->cache || d->job || e->have_policy)
        return;
    for (struct policy_req *r = p->ready; r; r = r->next)
        if (r->d == d)
            return;
    struct dom **pp = &p->table[hash(d->domain)];
    while (*pp && *pp != d)
        pp = &(*pp)->next;
    if (*pp)
        *pp = d->next;
    free(d);
}

static void job_end(struct job *j, const struct policy_entry *e, enum policy_source src)
{
    struct policy *p = j->p;
    struct dom *d = j->d;
    d->job = NULL;
    p->jobs--;
    struct policy_result res;
    result_from(&res, e, now_s(p), src, j->failure, j->error);
    res.change = j->change;
    struct policy_req *w = j->waiters;
    while (w) {
        struct policy_req *next = w->next;
        if (!w->cancelled)
            w->cb(w->arg, &res);
        free(w);
        w = next;
    }
    free(j);
    dom_maybe_drop(p, d, e);
}

static void job_fail(struct job *j, enum policy_failure f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void job_fail(struct job *j, enum policy_failure f, const char *fmt, ...)
{
    j->failure = f;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(j->error, sizeof(j->error), fmt, ap);
    va_end(ap);
}

static void mx_list(const struct sts_policy *sp, char *out, size_t size)
{
    struct buf b;
    buf_init(&b, size - 1);
    for (size_t i = 0; i < sp->n_mx; i++)
        if (buf_printf(&b, "%s%s", i ? "," : "", sp->mx[i]) != 0)
            break;
    str_copy(out, b.data ? b.data : "", size);
    buf_free(&b);
}

static struct fetch *start_fetch(struct policy *p, const char *domain, fetch_cb cb, void *arg);
static void fetch_done(void *arg, const struct fetch_result *fr);

/* Fetch the job's policy from its host; when no fetch can start, the job
 * ends with the cached entry and the failure. */
static void fetch_or_end(struct job *j)
{
    j->f = start_fetch(j->p, j->d->domain, fetch_done, j);
    if (j->f)
        return;
    job_fail(j, POLICY_FAIL_FETCH, "out of memory");
    struct policy_entry e;
    entry_load(j->p, j->d, &e);
    job_end(j, &e, POLICY_SRC_CACHE);
    policy_entry_clear(&e);
}

/* The shared cache's key of a policy: "DOMAIN ID" (policy_remote). */
static void remote_key(const struct job *j, char *out, size_t size)
{
    snprintf(out, size, "%s %s", j->d->domain, j->txt_id);
}

static void fetch_done(void *arg, const struct fetch_result *fr)
{
    struct job *j = arg;
    struct policy *p = j->p;
    j->f = NULL;
    int64_t now = now_s(p);
    struct policy_entry e;
    entry_load(p, j->d, &e);
    struct sts_policy sp;
    char why[256] = "";
    enum policy_failure f = fr->failure;
    int rc = fr->status;
    if (rc == 0) {
        if (memchr(fr->body, '\0', fr->body_len)) {
            rc = ERR_INVAL;
            f = POLICY_FAIL_INVALID;
            snprintf(why, sizeof(why), "policy contains a NUL byte");
        } else if (policy_parse(fr->body, fr->body_len, &sp, why, sizeof(why)) != 0) {
            rc = ERR_INVAL;
            f = POLICY_FAIL_INVALID;
        }
    } else {
        str_copy(why, fr->why, sizeof(why));
    }
    /* RFC 8460 4.3 result types name the failures ("sts-policy-fetch-
     * error", "sts-policy-invalid", ...). */
    const char *result = policy_failure_result_type(f);
    if (j->from_remote && rc != 0) {
        /* A shared text that does not pass: fetch it ourselves. */
        log_warn("sts", "policy from shared state ignored domain=%s id=%s: %s", j->d->domain,
                 j->txt_id, why);
        j->from_remote = false;
        policy_entry_clear(&e);
        fetch_or_end(j);
        return;
    }
    if (!j->from_remote)
        metric_add(MET_STS_FETCHES, rc == 0 ? "success" : result ? result : "failure", NULL, 1);
    if (rc == 0) {
        /* The whole policy against the cached one, not only the id: a
         * domain may fix its policy without publishing a new id. */
        if (!e.have_policy)
            j->change = POLICY_CHANGE_NEW;
        else if (strcmp(e.id, j->txt_id) != 0)
            j->change = POLICY_CHANGE_ID;
        else if (!policy_sts_equal(&e.policy, &sp))
            j->change = POLICY_CHANGE_CONTENT;
        int src = policy_entry_success(&e, j->txt_id, fr->body, fr->body_len, &sp, now);
        char mx[512];
        mx_list(&sp, mx, sizeof(mx));
        log_info("sts", "policy %s domain=%s id=%s mode=%s mx=%s max_age=%u",
                 j->from_remote ? "from shared state" : "fetched", j->d->domain, j->txt_id,
                 policy_mode_name(sp.mode), mx, sp.max_age);
        if (!j->from_remote && p->o.remote.put) {
            char key[POLICY_ID_MAX + 300];
            remote_key(j, key, sizeof(key));
            p->o.remote.put(p->o.remote.arg, key, fr->body, fr->body_len, (int64_t)sp.max_age);
        }
        if (j->change == POLICY_CHANGE_CONTENT)
            log_info("sts", "policy changed domain=%s id=%s: same id, new content", j->d->domain,
                     j->txt_id);
        policy_sts_clear(&sp);
        if (src == 0)
            entry_store(p, j->d, &e);
        job_end(j, &e, POLICY_SRC_FETCHED);
    } else {
        /* RFC 8461 3.3: a failed fetch never replaces or removes a valid
         * cached policy; only the attempt is recorded (for the backoff). */
        policy_entry_fail(&e, j->txt_id, now, f, why);
        entry_store(p, j->d, &e);
        log_info("sts", "policy fetch failed domain=%s id=%s result=%s reason=%s%s", j->d->domain,
                 j->txt_id, policy_failure_result_type(f) ? policy_failure_result_type(f) : "-",
                 why, policy_entry_valid(&e, now) ? " (cached policy still applies)" : "");
        job_fail(j, f, "%s", why);
        job_end(j, &e, POLICY_SRC_CACHE);
    }
    policy_entry_clear(&e);
}

static struct fetch *start_fetch(struct policy *p, const char *domain, fetch_cb cb, void *arg)
{
    struct fetch_params fp = {
        .loop = p->loop,
        .dns = p->dns,
        .tls = p->tls,
        .port = p->o.https_port,
        .timeout_ms = p->o.fetch_timeout_ms,
        .connect_timeout_ms = p->o.connect_timeout_ms,
        .max_body = p->o.max_policy_size,
        .user_agent = p->user_agent,
    };
    return fetch_start(&fp, domain, cb, arg);
}

static void remote_done(void *cbarg, int status, const char *value, size_t len)
{
    struct remote_ticket *t = cbarg;
    struct job *j = t->j;
    free(t);
    if (!j)
        return; /* the engine is gone */
    j->remote = NULL;
    struct policy *p = j->p;
    if (status == 0 && value && len > 0 && len <= p->o.max_policy_size) {
        /* Checked as a fetched body would be (fetch_done()). */
        struct fetch_result fr;
        memset(&fr, 0, sizeof(fr));
        fr.body = value;
        fr.body_len = len;
        j->from_remote = true;
        fetch_done(j, &fr);
        return;
    }
    fetch_or_end(j);
}

/* Before a fetch: the shared cache, when there is one. true: asked (the
 * answer goes on in remote_done()). */
static bool remote_ask(struct job *j)
{
    struct policy *p = j->p;
    if (!p->o.remote.get)
        return false;
    struct remote_ticket *t = calloc(1, sizeof(*t));
    if (!t)
        return false;
    t->j = j;
    char key[POLICY_ID_MAX + 300];
    remote_key(j, key, sizeof(key));
    if (p->o.remote.get(p->o.remote.arg, key, remote_done, t) != 0) {
        free(t);
        return false;
    }
    j->remote = t;
    return true;
}

/* Collect the TXT records of an answer for policy_txt_select(). */
static int txt_pick(const struct dns_result *r, char id[POLICY_ID_MAX + 1], char *why,
                    size_t why_size)
{
    const char *recs[DNS_MAX_RECORDS];
    size_t lens[DNS_MAX_RECORDS];
    size_t n = r->n_txt < DNS_MAX_RECORDS ? r->n_txt : DNS_MAX_RECORDS;
    for (size_t i = 0; i < n; i++) {
        recs[i] = r->txt[i].text;
        lens[i] = r->txt[i].len;
    }
    return policy_txt_select(recs, lens, n, id, why, why_size);
}

static void txt_done(void *arg, const struct dns_result *r)
{
    struct job *j = arg;
    struct policy *p = j->p;
    struct dom *d = j->d;
    j->q = NULL;
    int64_t now = now_s(p);
    struct policy_entry e;
    entry_load(p, d, &e);
    char why[256] = "";
    if (r->status == DNS_OK) {
        int rc = txt_pick(r, j->txt_id, why, sizeof(why));
        d->txt_checked = now;
        if (rc == 0) {
            bool force = j->kind != JOB_NORMAL;
            int64_t retry_after = (int64_t)p->o.retry_after_s;
            /* A refresh refetches an unchanged id only once per retry
             * period after any attempt; a recheck (an enforce policy
             * failed a delivery) once per retry period after the last
             * recheck, so the first failure after a fetch is looked at
             * again on the next attempt; an admin refresh always does. */
            if (force && j->kind == JOB_REFRESH && e.last_attempt &&
                now - e.last_attempt < retry_after && now >= e.last_attempt)
                force = false;
            if (force && j->kind == JOB_RECHECK && d->rechecked &&
                now - d->rechecked < retry_after && now >= d->rechecked)
                force = false;
            int64_t retry = j->kind == JOB_ADMIN ? 0 : (int64_t)p->o.retry_after_s;
            if (policy_entry_should_fetch(&e, j->txt_id, force, now, retry)) {
                if (j->kind == JOB_RECHECK)
                    d->rechecked = now;
                /* Another node may have fetched this id (not for an
                 * admin refresh or a recheck: those ask the source). */
                if (j->kind != JOB_ADMIN && j->kind != JOB_RECHECK && remote_ask(j)) {
                    policy_entry_clear(&e);
                    return;
                }
                j->f = start_fetch(p, d->domain, fetch_done, j);
                if (j->f) {
                    policy_entry_clear(&e);
                    return;
                }
                job_fail(j, POLICY_FAIL_FETCH, "out of memory");
            } else if (!(e.have_policy && strcmp(e.id, j->txt_id) == 0) && e.attempt_failed &&
                       strcmp(e.attempt_id, j->txt_id) == 0) {
                /* Backing off a failed id: say why, as the last time. */
                job_fail(j, e.last_failure, "%s (retry after backoff)", e.last_error);
            }
        } else if (rc == ERR_NOTFOUND) {
            /* No record: no policy, unless a cached one is unexpired (the
             * absence of a record does not remove it, RFC 8461 3.1). */
            str_copy(j->error, why, sizeof(j->error));
        } else {
            job_fail(j, POLICY_FAIL_INVALID, "%s", why);
        }
    } else if (r->status == DNS_NXDOMAIN || r->status == DNS_NODATA) {
        d->txt_checked = now;
        snprintf(j->error, sizeof(j->error), "no MTA-STS TXT record (%s)",
                 dns_status_name(r->status));
    } else {
        /* A DNS failure is not "no policy" when one is cached: the cached
         * policy answers (result_from); without one, deliver as without
         * MTA-STS (RFC 8461 3.3). */
        snprintf(j->error, sizeof(j->error), "TXT lookup of _mta-sts.%.180s failed: %.40s",
                 d->domain, r->why && *r->why ? r->why : dns_status_name(r->status));
    }
    if (j->error[0])
        log_debug("sts", "discovery domain=%s: %s", d->domain, j->error);
    job_end(j, &e, POLICY_SRC_CACHE);
    policy_entry_clear(&e);
}

static struct job *job_start(struct policy *p, struct dom *d, enum job_kind kind)
{
    struct job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->p = p;
    j->d = d;
    j->kind = kind;
    char name[POLICY_NAME_MAX + 16];
    snprintf(name, sizeof(name), "_mta-sts.%s", d->domain);
    if (dns_lookup(p->dns, name, DNS_T_TXT, txt_done, j, &j->q) != 0) {
        free(j);
        return NULL;
    }
    d->job = j;
    p->jobs++;
    return j;
}

static int request(struct policy *p, const char *domain, enum job_kind kind, policy_cb cb,
                   void *arg, struct policy_req **out)
{
    if (out)
        *out = NULL;
    char norm[POLICY_NAME_MAX];
    if (policy_domain_normalize(domain, norm) != 0)
        return ERR_INVAL;
    struct dom *d = dom_get(p, norm, true);
    if (!d)
        return ERR_NOMEM;
    struct policy_req *r = calloc(1, sizeof(*r));
    if (!r)
        return ERR_NOMEM;
    r->p = p;
    r->d = d;
    r->cb = cb;
    r->arg = arg;
    if (kind == JOB_NORMAL) {
        int64_t now = now_s(p);
        struct policy_entry e;
        entry_load(p, d, &e);
        bool valid = policy_entry_valid(&e, now);
        int64_t checked = d->txt_checked > e.txt_checked ? d->txt_checked : e.txt_checked;
        policy_entry_clear(&e);
        if (valid) {
            /* RFC 8461 5.1 step 1: the cached policy applies now. */
            if (now - checked >= (int64_t)p->o.txt_check_s && !d->job)
                job_start(p, d, JOB_NORMAL); /* background check, no waiters */
            ready_push(p, r);
            if (out)
                *out = r;
            return 0;
        }
    }
    struct job *j = d->job;
    if (!j) {
        j = job_start(p, d, kind);
        if (!j) {
            free(r);
            return ERR_NOMEM;
        }
    } else if (kind > j->kind && !j->f) {
        /* Not fetching yet: the stronger request decides whether to. */
        j->kind = kind;
    }
    r->next = j->waiters;
    j->waiters = r;
    if (out)
        *out = r;
    return 0;
}

int policy_get(struct policy *p, const char *domain, policy_cb cb, void *arg,
               struct policy_req **req)
{
    return request(p, domain, JOB_NORMAL, cb, arg, req);
}

int policy_recheck(struct policy *p, const char *domain, policy_cb cb, void *arg,
                   struct policy_req **req)
{
    return request(p, domain, JOB_RECHECK, cb, arg, req);
}

int policy_refresh(struct policy *p, const char *domain, policy_cb cb, void *arg,
                   struct policy_req **req)
{
    return request(p, domain, JOB_ADMIN, cb, arg, req);
}

void policy_cancel(struct policy_req *req)
{
    if (req)
        req->cancelled = true;
}

size_t policy_active(const struct policy *p)
{
    return p->jobs;
}

/* Records of no use any more are removed by policy_refresh_due(): no
 * policy or one expired for this long, and no attempt for as long. */
#define PRUNE_AFTER_S (30 * 86400)

struct refresh_ctx {
    struct policy *p;
    size_t max, started;
    int64_t now;
    char (*due)[POLICY_NAME_MAX];
    bool *force;
    size_t n;
    char (*prune)[POLICY_NAME_MAX];
    size_t n_prune;
};

static int refresh_each(void *arg, const struct policy_entry *e)
{
    struct refresh_ctx *rc = arg;
    if (rc->n >= rc->max && rc->n_prune >= rc->max)
        return 1;
    if (rc->n >= rc->max && e->have_policy && e->expires > rc->now)
        return 0;
    /* Expired policies no longer apply: the next lookup rediscovers. */
    if (!e->have_policy || e->expires <= rc->now) {
        int64_t dead_since = e->have_policy ? e->expires : 0;
        if (rc->prune && rc->n_prune < rc->max && rc->now - dead_since >= PRUNE_AFTER_S &&
            rc->now - e->last_attempt >= PRUNE_AFTER_S)
            str_copy(rc->prune[rc->n_prune++], e->domain, POLICY_NAME_MAX);
        return 0;
    }
    struct dom *d = dom_get(rc->p, e->domain, false);
    if (d && d->job)
        return 0;
    int64_t checked = e->txt_checked;
    if (d && d->txt_checked > checked)
        checked = d->txt_checked;
    /* Refetch in the second half of a policy's life, or within refresh_s of
     * its expiry if that comes later, so a policy in use never lapses and a
     * short-lived one is not fetched on every call. Never right after an
     * attempt (successful or not). */
    int64_t win = (int64_t)rc->p->o.refresh_s;
    int64_t half = (int64_t)e->policy.max_age / 2;
    bool near_expiry = e->expires - rc->now <= (half < win ? half : win);
    if (e->last_attempt && rc->now >= e->last_attempt &&
        rc->now - e->last_attempt < (int64_t)rc->p->o.retry_after_s)
        return 0;
    if (!near_expiry && rc->now - checked < win)
        return 0;
    str_copy(rc->due[rc->n], e->domain, POLICY_NAME_MAX);
    rc->force[rc->n] = near_expiry;
    rc->n++;
    return 0;
}

size_t policy_refresh_due(struct policy *p, size_t max_jobs)
{
    if (max_jobs == 0)
        return 0;
    struct refresh_ctx rc = {.p = p, .max = max_jobs, .now = now_s(p)};
    rc.due = calloc(max_jobs, POLICY_NAME_MAX);
    rc.force = calloc(max_jobs, sizeof(bool));
    rc.prune = p->cache ? calloc(max_jobs, POLICY_NAME_MAX) : NULL;
    if (!rc.due || !rc.force || (p->cache && !rc.prune)) {
        free(rc.due);
        free(rc.force);
        free(rc.prune);
        return 0;
    }
    if (p->cache) {
        policy_cache_each(p->cache, refresh_each, &rc);
        /* Deleted after the walk: one transaction at a time per thread. */
        for (size_t i = 0; i < rc.n_prune; i++) {
            struct dom *d = dom_get(p, rc.prune[i], false);
            if (d && d->job)
                continue;
            if (policy_cache_del(p->cache, rc.prune[i]) == 0)
                log_info("sts", "policy cache: dropped stale record domain=%s", rc.prune[i]);
        }
    } else {
        for (size_t b = 0; b < BUCKETS && rc.n < max_jobs; b++)
            for (struct dom *d = p->table[b]; d && rc.n < max_jobs; d = d->next)
                if (d->mem_set)
                    refresh_each(&rc, &d->mem);
    }
    for (size_t i = 0; i < rc.n; i++) {
        struct dom *d = dom_get(p, rc.due[i], true);
        if (d && !d->job && job_start(p, d, rc.force[i] ? JOB_REFRESH : JOB_NORMAL))
            rc.started++;
    }
    free(rc.due);
    free(rc.force);
    free(rc.prune);
    return rc.started;
}

/* ---- probe (admin) ------------------------------------------------------------ */

void policy_probe_clear(struct policy_probe *r)
{
    if (!r)
        return;
    policy_sts_clear(&r->policy);
    free(r->text);
    r->text = NULL;
}

static void probe_closed(uv_handle_t *h)
{
    struct probe_state *s = h->data;
    policy_probe_clear(&s->r);
    free(s);
}

static void probe_end(struct probe_state *s)
{
    s->cb(s->arg, &s->r);
    uv_close((uv_handle_t *)&s->idle, probe_closed);
}

static void probe_fetch_done(void *arg, const struct fetch_result *fr)
{
    struct probe_state *s = arg;
    struct policy_probe *r = &s->r;
    r->http_status = fr->http_status;
    r->tls_done = fr->tls_done;
    if (fr->tls_done)
        r->tls = fr->tls;
    if (fr->status != 0) {
        r->failure = fr->failure;
        str_copy(r->policy_error, fr->why, sizeof(r->policy_error));
        probe_end(s);
        return;
    }
    r->fetched = true;
    r->text = malloc(fr->body_len + 1);
    if (r->text) {
        memcpy(r->text, fr->body, fr->body_len);
        r->text[fr->body_len] = '\0';
        r->text_len = fr->body_len;
    }
    if (memchr(fr->body, '\0', fr->body_len)) {
        r->failure = POLICY_FAIL_INVALID;
        str_copy(r->policy_error, "policy contains a NUL byte", sizeof(r->policy_error));
    } else if (policy_parse(fr->body, fr->body_len, &r->policy, r->policy_error,
                            sizeof(r->policy_error)) == 0) {
        r->policy_valid = true;
    } else {
        r->failure = POLICY_FAIL_INVALID;
    }
    probe_end(s);
}

static void probe_txt_done(void *arg, const struct dns_result *res)
{
    struct probe_state *s = arg;
    struct policy_probe *r = &s->r;
    if (res->status == DNS_OK) {
        for (size_t i = 0; i < res->n_txt; i++)
            if (policy_txt_is_sts(res->txt[i].text, res->txt[i].len))
                r->txt_found = true;
        r->txt_valid = txt_pick(res, r->txt_id, r->txt_error, sizeof(r->txt_error)) == 0;
    } else {
        snprintf(r->txt_error, sizeof(r->txt_error), "TXT lookup of _mta-sts.%.180s: %.40s",
                 r->domain, res->why && *res->why ? res->why : dns_status_name(res->status));
    }
    if (!r->txt_valid && !s->fetch_anyway) {
        probe_end(s);
        return;
    }
    if (!start_fetch(s->p, r->domain, probe_fetch_done, s)) {
        str_copy(r->policy_error, "out of memory", sizeof(r->policy_error));
        r->failure = POLICY_FAIL_FETCH;
        probe_end(s);
    }
}

int policy_probe(struct policy *p, const char *domain, bool fetch_anyway, policy_probe_cb cb,
                 void *arg)
{
    struct probe_state *s = calloc(1, sizeof(*s));
    if (!s)
        return ERR_NOMEM;
    if (policy_domain_normalize(domain, s->r.domain) != 0) {
        free(s);
        return ERR_INVAL;
    }
    s->p = p;
    s->cb = cb;
    s->arg = arg;
    s->fetch_anyway = fetch_anyway;
    uv_idle_init(p->loop, &s->idle);
    s->idle.data = s;
    char name[POLICY_NAME_MAX + 16];
    snprintf(name, sizeof(name), "_mta-sts.%s", s->r.domain);
    if (dns_lookup(p->dns, name, DNS_T_TXT, probe_txt_done, s, NULL) != 0) {
        uv_close((uv_handle_t *)&s->idle, probe_closed);
        return ERR_NOMEM;
    }
    return 0;
}

/* ---- life ------------------------------------------------------------------------ */

int policy_new(uv_loop_t *loop, struct dns *dns, const struct policy_options *o,
               struct policy **out, char *why, size_t why_size)
{
    *out = NULL;
    struct policy *p = calloc(1, sizeof(*p));
    if (!p)
        return ERR_NOMEM;
    p->loop = loop;
    p->dns = dns;
    p->o = *o;
    if (!p->o.https_port)
        p->o.https_port = 443;
    if (!p->o.fetch_timeout_ms)
        p->o.fetch_timeout_ms = 60000;
    if (!p->o.max_policy_size)
        p->o.max_policy_size = 65536;
    p->user_agent = strdup(o->user_agent ? o->user_agent : "Convoy/" CONVOY_VERSION);
    p->ca_file = o->ca_file && *o->ca_file ? strdup(o->ca_file) : NULL;
    p->o.ca_file = p->ca_file;
    p->o.user_agent = p->user_agent;
    p->o.cache_path = NULL;
    p->ready_tail = &p->ready;
    if (!p->user_agent || (o->ca_file && *o->ca_file && !p->ca_file)) {
        free(p->user_agent);
        free(p->ca_file);
        free(p);
        return ERR_NOMEM;
    }
    char w[256] = "";
    p->tls = tls_ctx_client_new(p->ca_file, w, sizeof(w));
    if (!p->tls) {
        snprintf(why, why_size, "TLS client context: %s", w);
        free(p->user_agent);
        free(p->ca_file);
        free(p);
        return ERR_TLS;
    }
    if (o->cache_path) {
        int rc = ERR_NOMEM;
        p->cache_path = strdup(o->cache_path);
        if (p->cache_path)
            rc = policy_cache_open(o->cache_path, false, &p->cache, why, why_size);
        if (rc != 0) {
            free(p->cache_path);
            tls_ctx_free(p->tls);
            free(p->user_agent);
            free(p->ca_file);
            free(p);
            return rc;
        }
    }
    uv_idle_init(loop, &p->idle);
    p->idle.data = p;
    *out = p;
    return 0;
}

/* ---- reconfiguration (reload) ------------------------------------------------------ */

struct policy_update {
    struct policy_options o;
    char *ca_file;
    struct tls_ctx *tls;
};

int policy_update_prepare(struct policy *p, const struct policy_options *o,
                          struct policy_update **out, char *why, size_t why_size)
{
    *out = NULL;
    /* The cache stays open: its file cannot move under a running engine. */
    const char *was = p->cache_path ? p->cache_path : "";
    const char *now = o->cache_path ? o->cache_path : "";
    if (strcmp(was, now) != 0) {
        snprintf(why, why_size, "the policy cache file cannot change while the engine runs");
        return ERR_INVAL;
    }
    struct policy_update *u = calloc(1, sizeof(*u));
    if (!u)
        return ERR_NOMEM;
    u->o = *o;
    u->ca_file = o->ca_file && *o->ca_file ? strdup(o->ca_file) : NULL;
    if (o->ca_file && *o->ca_file && !u->ca_file) {
        free(u);
        return ERR_NOMEM;
    }
    /* The trust store is read again even under the same name: the file may
     * have been replaced, as for MX hosts on reload. */
    char w[256] = "";
    u->tls = tls_ctx_client_new(u->ca_file, w, sizeof(w));
    if (!u->tls) {
        snprintf(why, why_size, "TLS client context: %s", w);
        free(u->ca_file);
        free(u);
        return ERR_TLS;
    }
    *out = u;
    return 0;
}

void policy_update_free(struct policy_update *u)
{
    if (!u)
        return;
    tls_ctx_free(u->tls);
    free(u->ca_file);
    free(u);
}

void policy_update_apply(struct policy *p, struct policy_update *u)
{
    struct policy_options *o = &p->o;
    o->https_port = u->o.https_port ? u->o.https_port : 443;
    o->fetch_timeout_ms = u->o.fetch_timeout_ms ? u->o.fetch_timeout_ms : 60000;
    o->connect_timeout_ms = u->o.connect_timeout_ms;
    o->max_policy_size = u->o.max_policy_size ? u->o.max_policy_size : 65536;
    o->txt_check_s = u->o.txt_check_s;
    o->refresh_s = u->o.refresh_s;
    o->retry_after_s = u->o.retry_after_s;
    /* Fetches in progress hold their own reference to the old context
     * (fetch_start() takes one) and finish with it. */
    tls_ctx_free(p->tls);
    p->tls = u->tls;
    free(p->ca_file);
    p->ca_file = u->ca_file;
    o->ca_file = p->ca_file;
    free(u);
}

static void engine_closed(uv_handle_t *h)
{
    free(h->data);
}

void policy_free(struct policy *p)
{
    if (!p)
        return;
    for (size_t b = 0; b < BUCKETS; b++) {
        struct dom *d = p->table[b];
        while (d) {
            struct dom *next = d->next;
            if (d->job) {
                struct job *j = d->job;
                if (j->q)
                    dns_cancel(j->q);
                if (j->f)
                    fetch_abort(j->f);
                if (j->remote)
                    j->remote->j = NULL;
                for (struct policy_req *w = j->waiters, *n; w; w = n) {
                    n = w->next;
                    free(w);
                }
                free(j);
            }
            policy_entry_clear(&d->mem);
            free(d);
            d = next;
        }
    }
    for (struct policy_req *r = p->ready, *n; r; r = n) {
        n = r->next;
        free(r);
    }
    policy_cache_close(p->cache);
    tls_ctx_free(p->tls);
    free(p->user_agent);
    free(p->ca_file);
    free(p->cache_path);
    uv_idle_stop(&p->idle);
    uv_close((uv_handle_t *)&p->idle, engine_closed);
}

struct policy_cache *policy_cache(struct policy *p)
{
    return p->cache;
}
