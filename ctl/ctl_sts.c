/*
 * ctl_sts.c - convoyctl sts: MTA-STS (RFC 8461) for operators and domain
 * owners.
 *
 *   sts parse [FILE|-] [--match HOST]... [--json]   validate a policy file
 *   sts show DOMAIN [--json]                        the cached policy
 *   sts list [--json]                               every cached domain
 *   sts forget DOMAIN                               drop a cached policy
 *   sts refresh DOMAIN [--json]                     TXT + fetch now, store
 *   sts get DOMAIN [--recheck] [--burst N] [--json] what delivery would apply now
 *   sts overrides [FILE]                            check tls_policy_file
 *   sts check DOMAIN [--json]                       a live check; stores nothing
 *
 * The cache is <queue_directory>/sts.lmdb. LMDB lets convoyctl read it (and
 * write it: forget, refresh) while convoyd runs.
 *
 * sts check runs every step a delivery under the policy would, and prints
 * one line per step: TXT record, policy fetch (certificate of
 * mta-sts.DOMAIN), policy syntax, MX records against the policy's
 * patterns, then for each MX host: connect (smtp_destination_port),
 * banner, EHLO, STARTTLS, TLS handshake with the certificate verified for
 * the MX host name (RFC 8461 4.2), QUIT, run by smtp/client.c, the client
 * delivery uses (a session with no message). Exit code: the first failing
 * step (CHECK_* below); 0 when every step passed; EXIT_USAGE.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "dns.h"
#include "ctl.h"
#include "policy.h"
#include "smtp.h"
#include "tls.h"

/* sts check exit codes: the first step that failed. */
enum {
    CHECK_OK = 0,
    CHECK_TXT = 10,       /* no usable _mta-sts TXT record */
    CHECK_FETCH = 11,     /* the policy could not be fetched */
    CHECK_WEBPKI = 12,    /* the policy host's certificate is not valid */
    CHECK_POLICY = 13,    /* the policy is invalid (syntax, media type) */
    CHECK_MX_LOOKUP = 14, /* the MX lookup failed */
    CHECK_MX_MATCH = 15,  /* an MX host matches no mx pattern of the policy */
    CHECK_CONNECT = 16,   /* connect, banner or EHLO failed on an MX */
    CHECK_STARTTLS = 17,  /* an MX does not offer STARTTLS (or refuses it) */
    CHECK_CERT = 18,      /* an MX certificate is not valid for its name */
};

static void sts_usage(void)
{
    fprintf(stderr, "usage: convoyctl sts parse [FILE|-] [--match HOST]... [--json]\n"
                    "       convoyctl sts show DOMAIN [--json]\n"
                    "       convoyctl sts list [--json]\n"
                    "       convoyctl sts forget DOMAIN\n"
                    "       convoyctl sts refresh DOMAIN [--json]\n"
                    "       convoyctl sts get DOMAIN [--recheck] [--burst N] [--json]\n"
                    "       convoyctl sts overrides [FILE]\n"
                    "       convoyctl sts check DOMAIN [--json]\n");
}

static void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    printf("%s\n", s ? s : "null");
    free(s);
    json_decref(o);
}

static json_t *jstr_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

static void fmt_time(int64_t t, char *out, size_t size)
{
    if (t <= 0) {
        str_copy(out, "-", size);
        return;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, size, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

static void cache_path(const struct conf *c, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", c->queue_directory, POLICY_CACHE_FILE);
}

/* ---- parse ----------------------------------------------------------------- */

static json_t *mx_json(const struct sts_policy *p)
{
    json_t *a = json_array();
    for (size_t i = 0; p && i < p->n_mx; i++)
        json_array_append_new(a, json_string(p->mx[i]));
    return a;
}

static int sts_parse(const struct conf *c, int argc, char **argv)
{
    const char *file = NULL;
    const char *matches[64];
    size_t n_match = 0;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            as_json = true;
        } else if (strcmp(argv[i], "--match") == 0 && i + 1 < argc) {
            if (n_match == 64) {
                fprintf(stderr, "convoyctl: sts parse: too many --match\n");
                return EXIT_USAGE;
            }
            matches[n_match++] = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            sts_usage();
            return EXIT_USAGE;
        } else if (!file) {
            file = argv[i];
        } else {
            sts_usage();
            return EXIT_USAGE;
        }
    }
    FILE *f = stdin;
    if (file && strcmp(file, "-") != 0) {
        f = fopen(file, "rb");
        if (!f) {
            fprintf(stderr, "convoyctl: %s: %s\n", file, strerror(errno));
            return 1;
        }
    }
    struct buf b;
    buf_init(&b, c->sts_max_policy_size ? (size_t)c->sts_max_policy_size : 65536);
    int rc = file_read_stream(f, &b);
    if (f != stdin)
        fclose(f);
    struct sts_policy p;
    char why[256] = "";
    if (rc == ERR_TOOBIG) {
        snprintf(why, sizeof(why), "policy larger than %zu bytes (sts_max_policy_size)", b.max);
        memset(&p, 0, sizeof(p));
    } else if (rc != 0) {
        snprintf(why, sizeof(why), "read error");
        memset(&p, 0, sizeof(p));
    } else if (b.len && memchr(b.data, '\0', b.len)) {
        rc = ERR_INVAL;
        snprintf(why, sizeof(why), "policy contains a NUL byte");
        memset(&p, 0, sizeof(p));
    } else {
        rc = policy_parse(b.data ? b.data : "", b.len, &p, why, sizeof(why));
    }
    buf_free(&b);
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "valid", json_boolean(rc == 0));
        if (rc == 0) {
            json_object_set_new(o, "version", json_string("STSv1"));
            json_object_set_new(o, "mode", json_string(policy_mode_name(p.mode)));
            json_object_set_new(o, "mx", mx_json(&p));
            json_object_set_new(o, "max_age", json_integer(p.max_age));
            json_t *m = json_object();
            for (size_t i = 0; i < n_match; i++)
                json_object_set_new(m, matches[i], json_boolean(policy_mx_matches(&p, matches[i])));
            json_object_set_new(o, "match", m);
        } else {
            json_object_set_new(o, "error", json_string(why));
        }
        print_json(o);
    } else if (rc == 0) {
        printf("valid: version STSv1, mode %s, max_age %u\n", policy_mode_name(p.mode), p.max_age);
        for (size_t i = 0; i < p.n_mx; i++)
            printf("mx: %s\n", p.mx[i]);
        for (size_t i = 0; i < n_match; i++)
            printf("match %s: %s\n", matches[i], policy_mx_matches(&p, matches[i]) ? "yes" : "no");
    } else {
        printf("invalid: %s\n", why);
    }
    policy_sts_clear(&p);
    return rc == 0 ? 0 : 1;
}

/* ---- show, list, forget --------------------------------------------------------- */

static json_t *entry_json(const struct policy_entry *e, int64_t now)
{
    json_t *o = json_object();
    json_object_set_new(o, "domain", json_string(e->domain));
    json_object_set_new(o, "have_policy", json_boolean(e->have_policy));
    json_object_set_new(o, "valid", json_boolean(policy_entry_valid(e, now)));
    json_object_set_new(o, "id", jstr_or_null(e->have_policy ? e->id : NULL));
    json_object_set_new(
        o, "mode", e->have_policy ? json_string(policy_mode_name(e->policy.mode)) : json_null());
    json_object_set_new(o, "mx", mx_json(e->have_policy ? &e->policy : NULL));
    json_object_set_new(o, "max_age",
                        e->have_policy ? json_integer(e->policy.max_age) : json_null());
    json_object_set_new(o, "fetched", e->have_policy ? json_integer(e->fetched) : json_null());
    json_object_set_new(o, "expires", e->have_policy ? json_integer(e->expires) : json_null());
    json_object_set_new(o, "last_attempt", json_integer(e->last_attempt));
    json_object_set_new(o, "attempt_id", jstr_or_null(e->attempt_id));
    json_object_set_new(o, "attempt_failed", json_boolean(e->attempt_failed));
    json_object_set_new(o, "last_failure",
                        jstr_or_null(policy_failure_result_type(e->last_failure)));
    json_object_set_new(o, "last_error", jstr_or_null(e->last_error));
    json_object_set_new(o, "text", e->text ? json_stringn(e->text, e->text_len) : json_null());
    return o;
}

static void entry_print(const struct policy_entry *e, int64_t now)
{
    char t1[64], t2[64], t3[64];
    fmt_time(e->fetched, t1, sizeof(t1));
    fmt_time(e->expires, t2, sizeof(t2));
    fmt_time(e->last_attempt, t3, sizeof(t3));
    printf("domain: %s\n", e->domain);
    if (e->have_policy) {
        printf("policy: %s\n", policy_entry_valid(e, now) ? "valid" : "expired (not applied)");
        printf("id: %s\n", e->id);
        printf("mode: %s\n", policy_mode_name(e->policy.mode));
        for (size_t i = 0; i < e->policy.n_mx; i++)
            printf("mx: %s\n", e->policy.mx[i]);
        printf("max_age: %u\n", e->policy.max_age);
        printf("fetched: %s\n", t1);
        printf("expires: %s\n", t2);
    } else {
        printf("policy: none cached\n");
    }
    printf("last attempt: %s%s%s%s\n", t3, e->attempt_id[0] ? " id=" : "", e->attempt_id,
           e->last_attempt ? (e->attempt_failed ? " failed" : " ok") : "");
    if (e->attempt_failed)
        printf("last error: %s%s%s%s\n",
               policy_failure_result_type(e->last_failure)
                   ? policy_failure_result_type(e->last_failure)
                   : "",
               policy_failure_result_type(e->last_failure) ? ": " : "", e->last_error, "");
}

static int open_cache(const struct conf *c, bool readonly, struct policy_cache **out)
{
    char path[4096], why[512] = "";
    cache_path(c, path, sizeof(path));
    if (readonly && access(path, F_OK) != 0) {
        *out = NULL;
        return ERR_NOTFOUND;
    }
    int rc = policy_cache_open(path, readonly, out, why, sizeof(why));
    if (rc != 0)
        fprintf(stderr, "convoyctl: policy cache: %s\n", why[0] ? why : err_str(rc));
    return rc;
}

static int sts_show(const struct conf *c, int argc, char **argv)
{
    const char *dom = NULL;
    bool as_json = false;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (!dom && argv[i][0] != '-')
            dom = argv[i];
        else {
            sts_usage();
            return EXIT_USAGE;
        }
    }
    char norm[POLICY_NAME_MAX];
    if (!dom || policy_domain_normalize(dom, norm) != 0) {
        if (dom)
            fprintf(stderr, "convoyctl: sts show: invalid domain \"%s\"\n", dom);
        else
            sts_usage();
        return EXIT_USAGE;
    }
    struct policy_cache *pc;
    int rc = open_cache(c, true, &pc);
    struct policy_entry e;
    memset(&e, 0, sizeof(e));
    if (rc == 0) {
        rc = policy_cache_get(pc, norm, &e);
        policy_cache_close(pc);
    } else if (rc != ERR_NOTFOUND) {
        return 1;
    }
    if (rc != 0) {
        if (as_json) {
            json_t *o = json_object();
            json_object_set_new(o, "domain", json_string(norm));
            json_object_set_new(o, "cached", json_false());
            print_json(o);
        } else {
            printf("%s: not in the policy cache\n", norm);
        }
        return 1;
    }
    int64_t now = time_now_ms() / 1000;
    if (as_json) {
        json_t *o = entry_json(&e, now);
        json_object_set_new(o, "cached", json_true());
        print_json(o);
    } else {
        entry_print(&e, now);
    }
    policy_entry_clear(&e);
    return 0;
}

struct list_ctx {
    json_t *arr;
    int64_t now;
    size_t n;
};

static int list_cb(void *arg, const struct policy_entry *e)
{
    struct list_ctx *l = arg;
    l->n++;
    if (l->arr) {
        json_t *o = entry_json(e, l->now);
        json_object_del(o, "text");
        json_array_append_new(l->arr, o);
        return 0;
    }
    char t[64];
    fmt_time(e->expires, t, sizeof(t));
    if (e->have_policy)
        printf("%-32s %-8s id=%-20s %s until %s%s\n", e->domain, policy_mode_name(e->policy.mode),
               e->id, policy_entry_valid(e, l->now) ? "valid" : "expired", t,
               e->attempt_failed ? " (last fetch failed)" : "");
    else
        printf("%-32s %-8s %s\n", e->domain, "-", e->attempt_failed ? e->last_error : "no policy");
    return 0;
}

static int sts_list(const struct conf *c, int argc, char **argv)
{
    bool as_json = argc == 3 && strcmp(argv[2], "--json") == 0;
    if (argc > 3 || (argc == 3 && !as_json)) {
        sts_usage();
        return EXIT_USAGE;
    }
    struct list_ctx l = {.arr = as_json ? json_array() : NULL, .now = time_now_ms() / 1000};
    struct policy_cache *pc;
    int rc = open_cache(c, true, &pc);
    if (rc == 0) {
        policy_cache_each(pc, list_cb, &l);
        policy_cache_close(pc);
    } else if (rc != ERR_NOTFOUND) {
        json_decref(l.arr);
        return 1;
    }
    if (l.arr)
        print_json(l.arr);
    return 0;
}

static int sts_forget(const struct conf *c, int argc, char **argv)
{
    char norm[POLICY_NAME_MAX];
    if (argc != 3 || policy_domain_normalize(argv[2], norm) != 0) {
        sts_usage();
        return EXIT_USAGE;
    }
    struct policy_cache *pc;
    int rc = open_cache(c, true, &pc);
    if (rc == ERR_NOTFOUND) {
        printf("%s: not in the policy cache\n", norm);
        return 1;
    }
    if (rc != 0)
        return 1;
    policy_cache_close(pc);
    if (open_cache(c, false, &pc) != 0)
        return 1;
    rc = policy_cache_del(pc, norm);
    policy_cache_close(pc);
    if (rc == ERR_NOTFOUND) {
        printf("%s: not in the policy cache\n", norm);
        return 1;
    }
    if (rc != 0) {
        fprintf(stderr, "convoyctl: sts forget: %s\n", err_str(rc));
        return 1;
    }
    printf("%s: forgotten\n", norm);
    return 0;
}

/* ---- overrides: check the tls_policy_file ------------------------------------------ */

static int sts_overrides(const struct conf *c, int argc, char **argv)
{
    if (argc > 3) {
        sts_usage();
        return EXIT_USAGE;
    }
    const char *path = argc == 3 ? argv[2] : c->tls_policy_file;
    if (!path || !*path) {
        printf("tls_policy_file is not set: no overrides\n");
        return 0;
    }
    struct buf err;
    buf_init(&err, 64 * 1024);
    struct policy_overrides *o = policy_overrides_load(path, &err);
    if (!o) {
        fprintf(stderr, "%s", err.data ? err.data : "error\n");
        buf_free(&err);
        return 1;
    }
    buf_free(&err);
    printf("%s: %zu entr%s OK\n", path, policy_overrides_count(o),
           policy_overrides_count(o) == 1 ? "y" : "ies");
    policy_overrides_free(o);
    return 0;
}

/* ---- the engine for refresh and check ------------------------------------------------ */

struct env {
    uv_loop_t loop;
    struct dns *dns;
    struct policy *pol;
};

static int env_open(struct env *v, const struct conf *c, bool with_cache)
{
    memset(v, 0, sizeof(*v));
    uv_loop_init(&v->loop);
    struct dns_options dno;
    settings_dns_options(c, &dno);
    int rc = dns_new(&v->loop, &dno, &v->dns);
    if (rc != 0) {
        fprintf(stderr, "convoyctl: DNS resolver: %s\n", err_str(rc));
        uv_loop_close(&v->loop);
        return rc;
    }
    struct policy_options o;
    settings_policy_options(c, &o);
    char path[4096];
    cache_path(c, path, sizeof(path));
    if (with_cache) {
        if (access(c->queue_directory, F_OK) != 0 && mkdir(c->queue_directory, 0700) != 0) {
            fprintf(stderr, "convoyctl: %s: %s\n", c->queue_directory, strerror(errno));
            dns_free(v->dns);
            uv_run(&v->loop, UV_RUN_DEFAULT);
            uv_loop_close(&v->loop);
            return ERR_IO;
        }
        o.cache_path = path;
    }
    char why[512] = "";
    rc = policy_new(&v->loop, v->dns, &o, &v->pol, why, sizeof(why));
    if (rc != 0) {
        fprintf(stderr, "convoyctl: %s\n", why[0] ? why : err_str(rc));
        dns_free(v->dns);
        uv_run(&v->loop, UV_RUN_DEFAULT);
        uv_loop_close(&v->loop);
        return rc;
    }
    return 0;
}

static void env_close(struct env *v)
{
    policy_free(v->pol);
    dns_free(v->dns);
    uv_run(&v->loop, UV_RUN_DEFAULT);
    uv_loop_close(&v->loop);
}

static void run_until(struct env *v, const bool *done)
{
    while (!*done)
        uv_run(&v->loop, UV_RUN_ONCE);
}

struct refresh_state {
    bool done;
    bool fetched;
    json_t *json;
    bool as_json;
};

static void refresh_cb(void *arg, const struct policy_result *r)
{
    struct refresh_state *s = arg;
    s->done = true;
    s->fetched = r->source == POLICY_SRC_FETCHED;
    if (s->as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "domain", json_string(r->domain));
        json_object_set_new(o, "fetched", json_boolean(s->fetched));
        json_object_set_new(o, "have_policy", json_boolean(r->have_policy));
        json_object_set_new(o, "id", jstr_or_null(r->have_policy ? r->id : NULL));
        json_object_set_new(o, "mode",
                            r->have_policy ? json_string(policy_mode_name(r->policy->mode))
                                           : json_null());
        json_object_set_new(o, "mx", mx_json(r->have_policy ? r->policy : NULL));
        json_object_set_new(o, "max_age",
                            r->have_policy ? json_integer(r->policy->max_age) : json_null());
        json_object_set_new(o, "result", jstr_or_null(policy_failure_result_type(r->failure)));
        json_object_set_new(o, "error", jstr_or_null(r->error));
        s->json = o;
        return;
    }
    if (s->fetched) {
        printf("%s: policy fetched id=%s mode=%s max_age=%u\n", r->domain, r->id,
               policy_mode_name(r->policy->mode), r->policy->max_age);
        for (size_t i = 0; i < r->policy->n_mx; i++)
            printf("mx: %s\n", r->policy->mx[i]);
        return;
    }
    printf("%s: no policy fetched%s%s%s\n", r->domain, r->error[0] ? ": " : "", r->error,
           policy_failure_result_type(r->failure) ? "" : "");
    if (r->have_policy)
        printf("%s: the cached policy id=%s mode=%s still applies\n", r->domain, r->id,
               policy_mode_name(r->policy->mode));
}

static int sts_refresh(const struct conf *c, int argc, char **argv)
{
    bool as_json = false;
    const char *dom = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (!dom)
            dom = argv[i];
        else {
            sts_usage();
            return EXIT_USAGE;
        }
    }
    if (!dom) {
        sts_usage();
        return EXIT_USAGE;
    }
    struct env v;
    if (env_open(&v, c, true) != 0)
        return 1;
    struct refresh_state s = {.as_json = as_json};
    int rc = policy_refresh(v.pol, dom, refresh_cb, &s, NULL);
    if (rc != 0) {
        fprintf(stderr, "convoyctl: sts refresh: %s: %s\n", dom,
                rc == ERR_INVAL ? "invalid domain" : err_str(rc));
        env_close(&v);
        return rc == ERR_INVAL ? EXIT_USAGE : 1;
    }
    run_until(&v, &s.done);
    env_close(&v);
    if (s.json)
        print_json(s.json);
    return s.fetched ? 0 : 1;
}

/* ---- get: the engine's answer, as delivery would ask ------------------------------------ */

struct get_state {
    size_t want, got;
    size_t from_cache, fetched, none;
    bool done;
    json_t *first;
};

static json_t *result_json(const struct policy_result *r)
{
    static const char *const src[] = {"none", "cache", "fetched"};
    json_t *o = json_object();
    json_object_set_new(o, "domain", json_string(r->domain));
    json_object_set_new(o, "have_policy", json_boolean(r->have_policy));
    json_object_set_new(o, "source", json_string(src[r->source]));
    json_object_set_new(o, "id", jstr_or_null(r->have_policy ? r->id : NULL));
    json_object_set_new(
        o, "mode", r->have_policy ? json_string(policy_mode_name(r->policy->mode)) : json_null());
    json_object_set_new(o, "mx", mx_json(r->have_policy ? r->policy : NULL));
    json_object_set_new(o, "max_age",
                        r->have_policy ? json_integer(r->policy->max_age) : json_null());
    json_object_set_new(o, "expires", r->have_policy ? json_integer(r->expires) : json_null());
    json_object_set_new(o, "result", jstr_or_null(policy_failure_result_type(r->failure)));
    json_object_set_new(o, "error", jstr_or_null(r->error));
    return o;
}

static void get_cb(void *arg, const struct policy_result *r)
{
    struct get_state *s = arg;
    if (!s->first)
        s->first = result_json(r);
    if (r->source == POLICY_SRC_FETCHED)
        s->fetched++;
    else if (r->source == POLICY_SRC_CACHE)
        s->from_cache++;
    else
        s->none++;
    if (++s->got == s->want)
        s->done = true;
}

static int sts_get(const struct conf *c, int argc, char **argv)
{
    bool as_json = false, recheck = false;
    const char *dom = NULL;
    uint64_t burst = 1;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (strcmp(argv[i], "--recheck") == 0)
            recheck = true;
        else if (strcmp(argv[i], "--burst") == 0 && i + 1 < argc) {
            if (str_to_u64(argv[++i], &burst) != 0 || burst == 0 || burst > 1000000) {
                sts_usage();
                return EXIT_USAGE;
            }
        } else if (!dom && argv[i][0] != '-')
            dom = argv[i];
        else {
            sts_usage();
            return EXIT_USAGE;
        }
    }
    if (!dom) {
        sts_usage();
        return EXIT_USAGE;
    }
    struct env v;
    if (env_open(&v, c, true) != 0)
        return 1;
    /* A burst of lookups started together, as a queue run would: they share
     * one discovery. */
    struct get_state s = {.want = (size_t)burst};
    for (uint64_t i = 0; i < burst; i++) {
        int rc = recheck && i == 0 ? policy_recheck(v.pol, dom, get_cb, &s, NULL)
                                   : policy_get(v.pol, dom, get_cb, &s, NULL);
        if (rc != 0) {
            fprintf(stderr, "convoyctl: sts get: %s: %s\n", dom,
                    rc == ERR_INVAL ? "invalid domain" : err_str(rc));
            s.want = s.got;
            break;
        }
    }
    if (s.want)
        run_until(&v, &s.done);
    /* Let background checks finish before the cache is closed. */
    while (policy_active(v.pol) > 0)
        uv_run(&v.loop, UV_RUN_ONCE);
    env_close(&v);
    if (!s.first)
        return 1;
    json_t *o = s.first;
    bool have = json_is_true(json_object_get(o, "have_policy"));
    if (as_json) {
        json_object_set_new(o, "lookups", json_integer((json_int_t)s.got));
        json_object_set_new(o, "answered_from_cache", json_integer((json_int_t)s.from_cache));
        json_object_set_new(o, "answered_by_fetch", json_integer((json_int_t)s.fetched));
        json_object_set_new(o, "answered_no_policy", json_integer((json_int_t)s.none));
        print_json(o);
    } else {
        const char *err = json_string_value(json_object_get(o, "error"));
        if (have)
            printf("%s: policy id=%s mode=%s (%s)%s%s\n", dom,
                   json_string_value(json_object_get(o, "id")),
                   json_string_value(json_object_get(o, "mode")),
                   json_string_value(json_object_get(o, "source")), err ? "; " : "",
                   err ? err : "");
        else
            printf("%s: no policy%s%s\n", dom, err ? ": " : "", err ? err : "");
        if (burst > 1)
            printf("%zu lookups: %zu from the cache, %zu by a fetch, %zu without a policy\n", s.got,
                   s.from_cache, s.fetched, s.none);
        json_decref(o);
    }
    return have ? 0 : 1;
}

/* ---- check: the SMTP probe of one MX host --------------------------------------------- */

/*
 * The probe is a delivery session without a message, run by the SMTP client
 * delivery uses (smtp/client.c): connect, greeting, EHLO, STARTTLS, the
 * handshake with the certificate verified for the MX host name (RFC 8461
 * 4.2: SMTP_TLS_VERIFY, what delivery requires under enforce), EHLO again,
 * and QUIT as soon as the session is ready. Each step's result is read back
 * from the session's facts, and the TLS facts arrive through the client's
 * tls_check hook as they do for delivery, so the check reports what
 * delivery would see.
 */
struct mxprobe {
    struct tls_ctx *ctx;
    const char *helo;
    char host[POLICY_NAME_MAX];
    char ip[64];
    uint16_t port;
    struct smtp_timeouts timeouts;
    struct dns_addr addr;
    /* results */
    bool connected, banner, ehlo, starttls_offered, starttls, tls_ok, cert_valid;
    int first_fail; /* CHECK_* */
    char error[512];
    char banner_text[256];
    struct tls_facts facts;
    bool done;
};

/* A handshake failure that is the certificate's (CHECK_CERT), not the
 * connection's (CHECK_STARTTLS). */
static bool cert_failure(enum tls_failure f)
{
    return f == TLS_FAIL_HOST_MISMATCH || f == TLS_FAIL_CERT_EXPIRED ||
           f == TLS_FAIL_CERT_NOT_TRUSTED || f == TLS_FAIL_VALIDATION;
}

/* smtp_client tls_check: called after a handshake that completed (under
 * SMTP_TLS_VERIFY, with the certificate verified for the host). */
static bool probe_tls_check(struct smtp_client *c, const struct tls_facts *f,
                            struct smtp_outcome *out, void *arg)
{
    (void)c;
    (void)out;
    struct mxprobe *m = arg;
    m->facts = *f;
    m->tls_ok = true;
    m->cert_valid = f->verified;
    return true;
}

/* Read the steps back from a closed session. */
static void probe_judge(struct mxprobe *m, const struct smtp_client *c)
{
    const struct smtp_outcome *r = smtp_client_result(c);
    const struct tls_facts *f = smtp_client_tls(c);
    bool failed = r->action != SMTP_ACT_SENT;
    enum smtp_stage st = smtp_client_failed_stage(c);
    if (f)
        m->facts = *f;
    str_copy(m->banner_text, smtp_client_greeting(c), sizeof(m->banner_text));
    m->connected = !failed || st != SMTP_ST_CONNECT;
    m->banner = m->banner_text[0] != '\0';
    m->ehlo = smtp_client_established(c);
    /* A 220 to STARTTLS puts the session in the handshake. */
    m->starttls = f != NULL || (failed && st == SMTP_ST_TLS);
    m->starttls_offered =
        m->starttls || smtp_client_ext(c)->starttls || (failed && st == SMTP_ST_STARTTLS);
    if (!failed)
        return;
    str_copy(m->error, r->text, sizeof(m->error));
    if (!m->ehlo)
        m->first_fail = CHECK_CONNECT;
    else if (!m->starttls)
        m->first_fail = CHECK_STARTTLS; /* not offered, or refused */
    else if (!m->tls_ok)
        m->first_fail = cert_failure(m->facts.failure) ? CHECK_CERT : CHECK_STARTTLS;
    else
        m->first_fail = CHECK_CONNECT; /* the EHLO after TLS failed */
}

static void probe_event(struct smtp_client *c, enum smtp_event ev, void *arg)
{
    struct mxprobe *m = arg;
    if (ev == SMTP_EV_READY) {
        smtp_client_quit(c); /* a probe carries no message */
        return;
    }
    if (ev != SMTP_EV_CLOSED)
        return;
    probe_judge(m, c);
    smtp_client_free(c);
    m->done = true;
}

static void probe_run(struct env *v, struct mxprobe *m)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    dns_addr_format(&m->addr, m->ip, sizeof(m->ip));
    if (m->addr.family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(m->port);
        memcpy(&s4->sin_addr, m->addr.bytes, 4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(m->port);
        memcpy(&s6->sin6_addr, m->addr.bytes, 16);
    }
    struct smtp_client_opts o = {
        .helo_name = m->helo,
        .host = m->host,
        .addr = (const struct sockaddr *)&ss,
        .tls = SMTP_TLS_VERIFY,
        .verify_host = m->host,
        .tls_ctx = m->ctx,
        .tls_check = probe_tls_check,
        .timeouts = m->timeouts,
        .cb = probe_event,
        .arg = m,
    };
    int err = 0;
    if (!smtp_client_new(&v->loop, &o, &err)) {
        m->first_fail = CHECK_CONNECT;
        snprintf(m->error, sizeof(m->error), "cannot start a session: %s", err_str(err));
        return;
    }
    run_until(v, &m->done);
}

/* ---- check ------------------------------------------------------------------------------ */

struct check_state {
    bool done;
    struct policy_probe pr;
    bool mx_done;
    enum dns_status mx_status;
    char mx_why[128];
    size_t n_hosts;
    struct {
        char name[POLICY_NAME_MAX];
        uint16_t pref;
        bool have_addr;
        struct dns_addr addr;
        char why[128];
        bool secure;                     /* DNSSEC: its address records */
        char canonical[POLICY_NAME_MAX]; /* its CNAME target, or "" */
    } hosts[DNS_MAX_MX_HOSTS];
    bool mx_secure;
};

static void check_probe_cb(void *arg, const struct policy_probe *r)
{
    struct check_state *s = arg;
    s->pr = *r;
    /* Deep copies: the probe's own result goes when the callback returns. */
    s->pr.text = NULL;
    s->pr.text_len = 0;
    if (policy_sts_copy(&s->pr.policy, &r->policy) != 0)
        s->pr.policy_valid = false;
    s->done = true;
}

static void check_mx_cb(void *arg, const struct dns_mx_result *r)
{
    struct check_state *s = arg;
    s->mx_done = true;
    s->mx_status = r->status;
    s->mx_secure = r->secure;
    str_copy(s->mx_why, r->why ? r->why : "", sizeof(s->mx_why));
    for (size_t i = 0; i < r->n_hosts && i < DNS_MAX_MX_HOSTS; i++) {
        str_copy(s->hosts[i].name, r->hosts[i].name, POLICY_NAME_MAX);
        s->hosts[i].pref = r->hosts[i].pref;
        s->hosts[i].secure = r->hosts[i].secure;
        str_copy(s->hosts[i].canonical, r->hosts[i].canonical ? r->hosts[i].canonical : "",
                 POLICY_NAME_MAX);
        s->hosts[i].have_addr = r->hosts[i].status == DNS_OK && r->hosts[i].n_addr > 0;
        if (s->hosts[i].have_addr)
            s->hosts[i].addr = r->hosts[i].addr[0];
        str_copy(s->hosts[i].why,
                 r->hosts[i].why ? r->hosts[i].why : dns_status_name(r->hosts[i].status),
                 sizeof(s->hosts[i].why));
        s->n_hosts = i + 1;
    }
}

static int sts_check(const struct conf *c, int argc, char **argv)
{
    bool as_json = false;
    const char *dom = NULL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            as_json = true;
        else if (!dom)
            dom = argv[i];
        else {
            sts_usage();
            return EXIT_USAGE;
        }
    }
    char norm[POLICY_NAME_MAX];
    if (!dom || policy_domain_normalize(dom, norm) != 0) {
        sts_usage();
        return EXIT_USAGE;
    }
    struct env v;
    if (env_open(&v, c, false) != 0)
        return 1;
    int exit_code = 0;
#define FAIL_STEP(code)                                                                            \
    do {                                                                                           \
        if (!exit_code)                                                                            \
            exit_code = (code);                                                                    \
    } while (0)

    /* 1-3: TXT, fetch, parse. */
    struct check_state *s = calloc(1, sizeof(*s));
    if (!s || policy_probe(v.pol, norm, false, check_probe_cb, s) != 0) {
        fprintf(stderr, "convoyctl: sts check: cannot start\n");
        free(s);
        env_close(&v);
        return 1;
    }
    run_until(&v, &s->done);
    struct policy_probe *pr = &s->pr;
    json_t *jtxt = json_object(), *jpol = json_object();
    json_object_set_new(jtxt, "found", json_boolean(pr->txt_found));
    json_object_set_new(jtxt, "valid", json_boolean(pr->txt_valid));
    json_object_set_new(jtxt, "id", jstr_or_null(pr->txt_valid ? pr->txt_id : NULL));
    json_object_set_new(jtxt, "error", jstr_or_null(pr->txt_valid ? NULL : pr->txt_error));
    if (!as_json) {
        if (pr->txt_valid)
            printf("txt: ok: _mta-sts.%s id=%s\n", norm, pr->txt_id);
        else
            printf("txt: FAIL: %s\n", pr->txt_error);
    }
    if (!pr->txt_valid)
        FAIL_STEP(CHECK_TXT);
    bool have_policy = pr->policy_valid;
    json_object_set_new(jpol, "fetched", json_boolean(pr->fetched));
    json_object_set_new(jpol, "valid", json_boolean(pr->policy_valid));
    json_object_set_new(jpol, "mode",
                        have_policy ? json_string(policy_mode_name(pr->policy.mode)) : json_null());
    json_object_set_new(jpol, "mx", mx_json(have_policy ? &pr->policy : NULL));
    json_object_set_new(jpol, "max_age",
                        have_policy ? json_integer(pr->policy.max_age) : json_null());
    json_object_set_new(jpol, "error",
                        jstr_or_null(pr->policy_valid || !pr->txt_valid ? NULL : pr->policy_error));
    json_object_set_new(jpol, "result", jstr_or_null(policy_failure_result_type(pr->failure)));
    if (pr->txt_valid) {
        if (!as_json) {
            if (pr->fetched)
                printf("fetch: ok: https://mta-sts.%s/.well-known/mta-sts.txt (%s %s)\n", norm,
                       pr->tls.version, pr->tls.cipher);
            else
                printf("fetch: FAIL: %s: %s\n",
                       policy_failure_result_type(pr->failure)
                           ? policy_failure_result_type(pr->failure)
                           : "error",
                       pr->policy_error);
            if (pr->fetched && pr->policy_valid)
                printf("policy: ok: mode=%s max_age=%u mx=%zu pattern(s)\n",
                       policy_mode_name(pr->policy.mode), pr->policy.max_age, pr->policy.n_mx);
            else if (pr->fetched)
                printf("policy: FAIL: sts-policy-invalid: %s\n", pr->policy_error);
        }
        if (!pr->fetched)
            FAIL_STEP(pr->failure == POLICY_FAIL_WEBPKI    ? CHECK_WEBPKI
                      : pr->failure == POLICY_FAIL_INVALID ? CHECK_POLICY
                                                           : CHECK_FETCH);
        else if (!pr->policy_valid)
            FAIL_STEP(CHECK_POLICY);
    }

    /* 4: MX records against the policy. */
    dns_mx_resolve(v.dns, norm, check_mx_cb, s, NULL);
    run_until(&v, &s->mx_done);
    bool mx_ok = s->mx_status == DNS_OK || s->mx_status == DNS_IMPLICIT_MX;
    if (!mx_ok) {
        if (!as_json)
            printf("mx: FAIL: %s (%s)\n", dns_status_name(s->mx_status), s->mx_why);
        FAIL_STEP(CHECK_MX_LOOKUP);
    }
    const struct sts_policy *sp = have_policy ? &pr->policy : NULL;
    bool enforce = sp && sp->mode == POLICY_MODE_ENFORCE;
    struct tls_ctx *ctx = NULL;
    char why[256] = "";
    const char *ca = c->smtp_tls_CAfile && c->smtp_tls_CAfile[0] ? c->smtp_tls_CAfile : NULL;
    ctx = tls_ctx_client_new(ca, why, sizeof(why));
    if (!ctx)
        fprintf(stderr, "convoyctl: TLS client context: %s\n", why);
    char helo[256];
    settings_helo_name(c, helo, sizeof(helo));
    json_t *jmx = json_array();
    size_t usable = 0;
    for (size_t i = 0; mx_ok && i < s->n_hosts; i++) {
        const char *h = s->hosts[i].name;
        bool matches = sp ? (sp->mode == POLICY_MODE_NONE || policy_mx_matches(sp, h)) : true;
        if (!as_json)
            printf("mx %s (preference %u): %s\n", h, s->hosts[i].pref,
                   !sp       ? "no policy to match"
                   : matches ? "matches the policy"
                             : "FAIL: matches no mx pattern of the policy");
        /* RFC 8461 2: where DANE applies to a host its verdict stands
         * instead of the policy's (delivery/dane.c). */
        const char *l = c->smtp_tls_security_level ? c->smtp_tls_security_level : "";
        bool dane = false;
        char dane_why[400] = "";
        if (strcmp(l, "dane") == 0 || strcmp(l, "dane-only") == 0) {
            dane = ctl_dane_applies(&v.loop, v.dns, (uint16_t)c->smtp_destination_port,
                                    s->mx_secure, s->hosts[i].secure, h, s->hosts[i].canonical,
                                    dane_why, sizeof(dane_why));
            if (!as_json)
                printf("  dane: %s (%s)\n",
                       dane ? "takes precedence over MTA-STS for this host (convoyctl dane check)"
                            : "does not apply: MTA-STS decides",
                       dane_why);
        }
        if (sp && !matches && !dane)
            FAIL_STEP(CHECK_MX_MATCH);
        struct mxprobe *m = calloc(1, sizeof(*m));
        if (!m)
            break;
        str_copy(m->host, h, sizeof(m->host));
        m->ctx = ctx;
        m->helo = helo;
        m->port = (uint16_t)c->smtp_destination_port;
        settings_smtp_timeouts(c, &m->timeouts);
        if (!ctx) {
            m->first_fail = CHECK_STARTTLS;
            snprintf(m->error, sizeof(m->error), "no TLS client context: %.200s", why);
        } else if (!s->hosts[i].have_addr) {
            m->first_fail = CHECK_CONNECT;
            snprintf(m->error, sizeof(m->error), "no address: %.100s", s->hosts[i].why);
        } else {
            m->addr = s->hosts[i].addr;
            probe_run(&v, m);
        }
        if (!as_json) {
            printf("  connect %s port %u: %s\n", m->ip[0] ? m->ip : "-", (unsigned)m->port,
                   m->connected ? "ok" : "FAIL");
            if (m->connected) {
                printf("  banner: %s%s\n",
                       m->banner ? "ok: " : "FAIL: ", m->banner ? m->banner_text : m->error);
                if (m->banner)
                    printf("  ehlo: %s\n", m->ehlo ? "ok" : "FAIL");
                if (m->ehlo)
                    printf("  starttls: %s\n", m->starttls           ? "ok"
                                               : m->starttls_offered ? "FAIL: refused"
                                                                     : "FAIL: not offered");
                if (m->starttls)
                    printf("  tls: %s%s%s%s\n",
                           m->cert_valid ? "ok: certificate valid for " : "FAIL: ",
                           m->cert_valid ? h : m->error, m->cert_valid ? ", " : "",
                           m->cert_valid ? m->facts.version : "");
            }
            if (m->first_fail && !(m->connected && m->banner))
                printf("  error: %s\n", m->error);
        }
        if (m->first_fail)
            FAIL_STEP(m->first_fail);
        if (matches && m->cert_valid)
            usable++;
        json_t *o = json_object();
        json_object_set_new(o, "host", json_string(h));
        json_object_set_new(o, "preference", json_integer(s->hosts[i].pref));
        json_object_set_new(o, "address", jstr_or_null(m->ip));
        json_object_set_new(o, "matches_policy", json_boolean(sp ? matches : false));
        json_object_set_new(o, "dane_precedence", json_boolean(dane));
        json_object_set_new(o, "starttls", json_boolean(m->starttls));
        json_object_set_new(o, "certificate_valid", json_boolean(m->cert_valid));
        json_object_set_new(o, "tls_version", jstr_or_null(m->facts.version));
        json_object_set_new(o, "result",
                            jstr_or_null(!m->starttls_offered && m->ehlo ? "starttls-not-supported"
                                         : m->facts.failure
                                             ? tls_failure_result_type(m->facts.failure)
                                             : NULL));
        json_object_set_new(o, "error", jstr_or_null(m->first_fail ? m->error : NULL));
        json_array_append_new(jmx, o);
        free(m);
    }
    tls_ctx_free(ctx);
    const char *verdict;
    if (!sp || sp->mode == POLICY_MODE_NONE)
        verdict = "no-policy";
    else if (enforce)
        verdict = usable > 0 ? "deliverable" : "deferred";
    else
        verdict = "deliverable"; /* testing: delivered regardless, reported */
    if (as_json) {
        json_t *o = json_object();
        json_object_set_new(o, "domain", json_string(norm));
        json_object_set_new(o, "txt", jtxt);
        json_object_set_new(o, "policy", jpol);
        json_object_set_new(o, "mx", jmx);
        json_object_set_new(o, "verdict", json_string(verdict));
        json_object_set_new(o, "exit", json_integer(exit_code));
        print_json(o);
    } else {
        json_decref(jtxt);
        json_decref(jpol);
        json_decref(jmx);
        printf("verdict: %s\n", verdict);
    }
    policy_probe_clear(&s->pr);
    free(s);
    env_close(&v);
    return exit_code;
#undef FAIL_STEP
}

int ctl_sts(struct conf *c, int argc, char **argv)
{
    if (argc < 2) {
        sts_usage();
        return EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "parse") == 0)
        return sts_parse(c, argc, argv);
    if (strcmp(sub, "show") == 0)
        return sts_show(c, argc, argv);
    if (strcmp(sub, "list") == 0)
        return sts_list(c, argc, argv);
    if (strcmp(sub, "forget") == 0)
        return sts_forget(c, argc, argv);
    if (strcmp(sub, "refresh") == 0)
        return sts_refresh(c, argc, argv);
    if (strcmp(sub, "check") == 0)
        return sts_check(c, argc, argv);
    if (strcmp(sub, "get") == 0)
        return sts_get(c, argc, argv);
    if (strcmp(sub, "overrides") == 0)
        return sts_overrides(c, argc, argv);
    fprintf(stderr, "convoyctl: sts: unknown subcommand \"%s\"\n", sub);
    sts_usage();
    return EXIT_USAGE;
}
