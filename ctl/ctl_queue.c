/*
 * ctl_queue.c - convoyctl queue: look at the queue, and act on it.
 *
 * Looking (list, summary, show) reads LMDB directly, read-only, whether
 * convoyd runs or not (LMDB lets readers run beside the one writer; a reader
 * sees the last committed state). Acting (retry, hold, release, delete,
 * bounce) selects messages the same way `list` does (one filter, qfilter.c),
 * then asks convoyd over the control socket, which owns the queue's writer.
 *
 *   convoyctl queue list [FILTER] [--count] [--json]
 *     one line per message: ID SIZE ARRIVAL <SENDER> RCPT:STATE[(reason)]...
 *     --json: NDJSON, one object per message with "version": 1
 *   convoyctl queue summary [--by domain|reason] [FILTER] [--json]
 *     qshape's table (messages by age, minutes) and the top deferral reasons
 *   convoyctl queue show ID [--headers|--body] [--json]
 *   convoyctl queue retry|hold|release|delete|bounce
 *       (ID... | - | FILTER | --all --yes) [--why TEXT] [--dry-run]
 *
 * FILTER: --state S (repeatable), --from RE, --to RE, --domain D,
 * --reason RE, --older DUR, --younger DUR (see qfilter.h).
 *
 * Exit codes: 0 ok, 1 failure, 2 usage, 3 convoyd not running (actions).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <sys/stat.h>

#include <jansson.h>

#include "ctl.h"
#include "qfilter.h"
#include "queue.h"
#include "settings.h"

#define CTL_QUEUE_JSON_VERSION 1
#define ACTION_BATCH 5000
#define SUMMARY_ROWS_MAX 100000
#define TOP_REASONS 10

static void queue_usage(void)
{
    fprintf(stderr,
            "usage: convoyctl queue list [FILTER] [--count] [--json]\n"
            "       convoyctl queue summary [--by domain|reason] [FILTER] [--json]\n"
            "       convoyctl queue show ID [--headers|--body] [--json]\n"
            "       convoyctl queue retry|hold|release|delete|bounce\n"
            "                 (ID... | - | FILTER | --all --yes) [--why TEXT] [--dry-run]\n"
            "FILTER: --state queued|active|deferred|held|delivered|bounced, --from RE, --to RE,\n"
            "        --domain D, --reason RE, --older DUR, --younger DUR\n");
}

/* ---- common ----------------------------------------------------------------------- */

static int open_ro(struct conf *c, struct queue **q)
{
    struct queue_options o;
    settings_queue_options(c, &o);
    o.read_only = true;
    struct buf why;
    buf_init(&why, 1024);
    int rc = queue_open(NULL, &o, q, &why);
    if (rc) {
        if (rc == ERR_PERM)
            fprintf(stderr,
                    "convoyctl: queue: %s\nconvoyctl: only root and members of the daemon's "
                    "group may read the queue\n",
                    why.len ? why.data : err_str(rc));
        else
            fprintf(stderr, "convoyctl: queue: %s\n", why.len ? why.data : err_str(rc));
        buf_free(&why);
        return 1;
    }
    buf_free(&why);
    return 0;
}

/* ISO 8601 UTC with milliseconds dropped: 2026-11-30T16:54:03Z. */
static void iso_time(int64_t ms, char *out, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms <= 0 || !gmtime_r(&t, &tm) || strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        str_copy(out, "-", size);
}

/* Text from the network on one line: control characters become spaces. */
static void print_oneline(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s, f);
}

/* A JSON string; bytes that are not UTF-8 become '?' rather than dropping
 * the value (mail may carry 8-bit junk in envelope fields). */
static json_t *jstrn(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *t = malloc(n + 1);
    if (!t)
        return json_null();
    for (size_t i = 0; i < n; i++)
        t[i] = (unsigned char)s[i] >= 0x80 || s[i] == 0 ? '?' : s[i];
    j = json_stringn(t, n);
    free(t);
    return j ? j : json_null();
}

static json_t *jstr(const char *s)
{
    return jstrn(s, strlen(s));
}

static json_t *jtime(int64_t ms)
{
    char when[32];
    if (ms <= 0)
        return json_null();
    iso_time(ms, when, sizeof(when));
    return json_string(when);
}

static bool show_reason(const struct queue_rcpt *r)
{
    return r->has_result && (r->state == QUEUE_RCPT_DEFERRED || r->state == QUEUE_RCPT_BOUNCED ||
                             r->state == QUEUE_RCPT_HELD || r->state == QUEUE_RCPT_QUEUED);
}

static void print_plain(const struct queue_message *m)
{
    char when[32];
    iso_time(m->env.arrival_ms, when, sizeof(when));
    printf("%s %8llu %s <", m->id, (unsigned long long)m->env.size, when);
    print_oneline(stdout, m->env.sender);
    printf(">");
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        printf(" ");
        print_oneline(stdout, r->addr);
        printf(":%s", queue_rcpt_state_name(r->state));
        if (show_reason(r)) {
            char reason[2048];
            qfilter_reason(r, reason, sizeof(reason));
            printf("(%s)", reason);
        }
    }
    printf("\n");
}

static json_t *result_json(const struct queue_result *r)
{
    json_t *o = json_object();
    json_object_set_new(o, "smtp_code", r->smtp_code ? json_integer(r->smtp_code) : json_null());
    json_object_set_new(o, "dsn", jstr(r->dsn));
    json_object_set_new(o, "text", jstr(r->text));
    json_object_set_new(o, "mx", jstr(r->mx));
    json_object_set_new(o, "ip", jstr(r->ip));
    json_object_set_new(o, "tls", jstr(r->tls));
    json_object_set_new(o, "sts_mode", jstr(r->sts_mode));
    json_object_set_new(o, "sts_id", jstr(r->sts_id));
    json_object_set_new(o, "time", jtime(r->when_ms));
    return o;
}

static json_t *notify_json(unsigned notify)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{QUEUE_NOTIFY_NEVER, "NEVER"},
                 {QUEUE_NOTIFY_SUCCESS, "SUCCESS"},
                 {QUEUE_NOTIFY_FAILURE, "FAILURE"},
                 {QUEUE_NOTIFY_DELAY, "DELAY"}};
    if (!notify)
        return json_null();
    json_t *a = json_array();
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (notify & names[i].bit)
            json_array_append_new(a, json_string(names[i].name));
    return a;
}

/* The message object of list --json and show --json (version 1; fields are
 * only ever added). */
static json_t *message_json(const struct queue_message *m)
{
    static const char *const rets[] = {NULL, "FULL", "HDRS"};
    json_t *o = json_object();
    json_object_set_new(o, "version", json_integer(CTL_QUEUE_JSON_VERSION));
    json_object_set_new(o, "id", json_string(m->id));
    json_object_set_new(o, "size", json_integer((json_int_t)m->env.size));
    json_object_set_new(o, "arrival", jtime(m->env.arrival_ms));
    json_object_set_new(o, "arrival_ms", json_integer(m->env.arrival_ms));
    json_object_set_new(o, "sender", jstr(m->env.sender));
    json_t *cl = json_object();
    json_object_set_new(cl, "name", jstr(m->env.client_name));
    json_object_set_new(cl, "addr", jstr(m->env.client_addr));
    json_object_set_new(cl, "helo", jstr(m->env.helo));
    json_object_set_new(cl, "auth_user", jstr(m->env.auth_user));
    json_object_set_new(cl, "tls", jstr(m->env.tls));
    json_object_set_new(o, "client", cl);
    json_object_set_new(o, "envid", m->env.envid[0] ? jstr(m->env.envid) : json_null());
    json_object_set_new(o, "ret",
                        m->env.ret <= QUEUE_RET_HDRS && rets[m->env.ret]
                            ? json_string(rets[m->env.ret])
                            : json_null());
    json_object_set_new(o, "smtputf8", json_boolean(m->env.flags & QUEUE_F_SMTPUTF8));
    json_object_set_new(o, "8bitmime", json_boolean(m->env.flags & QUEUE_F_8BITMIME));
    /* TLS-Required: No (RFC 8689) in the message's header section. */
    json_object_set_new(o, "tls_required_no", json_boolean(m->env.flags & QUEUE_F_TLS_OPTIONAL));
    json_t *rs = json_array();
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        json_t *j = json_object();
        json_object_set_new(j, "index", json_integer(r->index));
        json_object_set_new(j, "address", jstr(r->addr));
        json_object_set_new(j, "orcpt", r->orcpt[0] ? jstr(r->orcpt) : json_null());
        json_object_set_new(j, "notify", notify_json(r->notify));
        json_object_set_new(j, "state", json_string(queue_rcpt_state_name(r->state)));
        json_object_set_new(j, "attempts", json_integer(r->attempts));
        bool in_flight =
            r->state == QUEUE_RCPT_ACTIVE || (r->state == QUEUE_RCPT_HELD && r->next_ms > 0);
        json_object_set_new(j, "in_flight", json_boolean(in_flight));
        json_object_set_new(j, in_flight ? "lease_until" : "next_attempt", jtime(r->next_ms));
        json_object_set_new(j, "last_result", r->has_result ? result_json(&r->last) : json_null());
        char reason[2048];
        qfilter_reason(r, reason, sizeof(reason));
        json_object_set_new(j, "reason", r->has_result ? jstr(reason) : json_null());
        json_array_append_new(rs, j);
    }
    json_object_set_new(o, "recipients", rs);
    return o;
}

static int print_json_line(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return ERR_NOMEM;
    printf("%s\n", s);
    free(s);
    return 0;
}

/* Parse filter options from argv[from..]; other arguments are handed to
 * other(arg, argv, &i) which returns 1 if it took the argument (and maybe
 * its value), 0 if unknown, negative on a usage error. */
typedef int (*arg_fn)(void *arg, int argc, char **argv, int *i);

static int parse_args(struct qfilter *f, int argc, char **argv, int from, arg_fn other, void *arg)
{
    for (int i = from; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) == 0 && a[2]) {
            char why[300];
            const char *val = i + 1 < argc ? argv[i + 1] : NULL;
            int rc = qfilter_option(f, a, val ? val : "", why, sizeof(why));
            if (rc == 1 && !val) {
                fprintf(stderr, "convoyctl: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            if (rc < 0) {
                fprintf(stderr, "convoyctl: %s\n", why);
                return EXIT_USAGE;
            }
            if (rc == 1) {
                i++;
                continue;
            }
        }
        int rc = other ? other(arg, argc, argv, &i) : 0;
        if (rc == 0) {
            fprintf(stderr, "convoyctl: queue %s: unknown argument %s\n", argv[1], a);
            queue_usage();
        }
        if (rc <= 0)
            return EXIT_USAGE;
    }
    return 0;
}

/* ---- list ------------------------------------------------------------------------- */

struct list_ctx {
    const struct qfilter *f;
    int64_t now;
    bool json, count;
    uint64_t messages, bytes;
    int err;
};

static int list_one(void *arg, const struct queue_message *m)
{
    struct list_ctx *x = arg;
    if (!qfilter_match(x->f, m, x->now))
        return 0;
    x->messages++;
    x->bytes += m->env.size;
    if (x->count)
        return 0;
    if (x->json) {
        x->err = print_json_line(message_json(m));
        return x->err ? 1 : 0;
    }
    print_plain(m);
    return 0;
}

struct list_opts {
    bool json, count;
};

static int list_arg(void *arg, int argc, char **argv, int *i)
{
    (void)argc;
    struct list_opts *o = arg;
    if (strcmp(argv[*i], "--json") == 0)
        o->json = true;
    else if (strcmp(argv[*i], "--count") == 0)
        o->count = true;
    else
        return 0;
    return 1;
}

/* The filter options of a read-only command (extra ones to argfn) and the
 * queue opened read-only. 0: both ready, the caller frees and closes them;
 * else nothing is left open. */
static int open_filtered(struct conf *c, int argc, char **argv, arg_fn argfn, void *arg,
                         struct qfilter *f, struct queue **q)
{
    qfilter_init(f);
    int rc = parse_args(f, argc, argv, 2, argfn, arg);
    if (rc == 0)
        rc = open_ro(c, q);
    if (rc)
        qfilter_free(f);
    return rc;
}

static int cmd_list(struct conf *c, int argc, char **argv)
{
    struct qfilter f;
    struct list_opts lo = {0};
    struct queue *q = NULL;
    int rc = open_filtered(c, argc, argv, list_arg, &lo, &f, &q);
    if (rc)
        return rc;
    struct list_ctx x = {.f = &f, .now = time_now_ms(), .json = lo.json, .count = lo.count};
    rc = queue_list(q, NULL, list_one, &x);
    queue_close(q);
    qfilter_free(&f);
    if (rc == ERR_CORRUPT) {
        fprintf(stderr, "convoyctl: queue: some records do not decode and were skipped\n");
        return 1;
    }
    if (rc || x.err) {
        fprintf(stderr, "convoyctl: queue: %s\n", err_str(rc ? rc : x.err));
        return 1;
    }
    if (x.count) {
        if (x.json)
            printf("{\"version\":%d,\"messages\":%llu,\"bytes\":%llu}\n", CTL_QUEUE_JSON_VERSION,
                   (unsigned long long)x.messages, (unsigned long long)x.bytes);
        else
            printf("%llu\n", (unsigned long long)x.messages);
    } else if (!x.json) {
        if (x.messages == 0)
            printf(f.any ? "no message matches\n" : "queue is empty\n");
        else
            printf("-- %llu message%s, %llu bytes\n", (unsigned long long)x.messages,
                   x.messages == 1 ? "" : "s", (unsigned long long)x.bytes);
    }
    return fflush(stdout) != 0 ? 1 : 0;
}

/* ---- summary (qshape) -------------------------------------------------------------- */

struct srow {
    char *key;
    uint64_t total;
    uint64_t b[QSHAPE_BUCKETS];
};

struct stable {
    struct srow *rows;
    size_t n, cap;
    bool overflow;
};

static struct srow *stable_get(struct stable *t, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->rows[i].key, key) == 0)
            return &t->rows[i];
    if (t->n >= SUMMARY_ROWS_MAX) {
        t->overflow = true;
        return NULL;
    }
    if (t->n == t->cap) {
        size_t ncap = t->cap ? t->cap * 2 : 64;
        struct srow *nr = realloc(t->rows, ncap * sizeof(*nr));
        if (!nr)
            return NULL;
        t->rows = nr;
        t->cap = ncap;
    }
    struct srow *r = &t->rows[t->n];
    memset(r, 0, sizeof(*r));
    r->key = strdup(key);
    if (!r->key)
        return NULL;
    t->n++;
    return r;
}

static void stable_free(struct stable *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->rows[i].key);
    free(t->rows);
}

static int srow_cmp(const void *a, const void *b)
{
    const struct srow *x = a, *y = b;
    if (x->total != y->total)
        return x->total > y->total ? -1 : 1;
    return strcmp(x->key, y->key);
}

struct sum_ctx {
    const struct qfilter *f;
    int64_t now;
    bool by_reason;
    struct srow total;
    struct stable rows;
    struct stable reasons;
    int err;
};

static void srow_add(struct srow *r, int bucket)
{
    r->total++;
    r->b[bucket]++;
}

static int sum_one(void *arg, const struct queue_message *m)
{
    struct sum_ctx *x = arg;
    if (!qfilter_match(x->f, m, x->now))
        return 0;
    int bucket = qshape_bucket(x->now - m->env.arrival_ms);
    srow_add(&x->total, bucket);
    /* A message counts once per row (domain or reason), as qshape does. */
    const char *seen[64];
    size_t n_seen = 0;
    for (size_t i = 0; i < m->n_rcpts; i++) {
        const struct queue_rcpt *r = &m->rcpts[i];
        if (r->state == QUEUE_RCPT_DELIVERED || r->state == QUEUE_RCPT_BOUNCED ||
            !qfilter_rcpt(x->f, r))
            continue;
        char reason[2048] = "";
        if (r->has_result)
            qfilter_reason(r, reason, sizeof(reason));
        if (r->state == QUEUE_RCPT_DEFERRED && reason[0]) {
            struct srow *rr = stable_get(&x->reasons, reason);
            if (rr)
                srow_add(rr, bucket);
        }
        char key[2048];
        if (x->by_reason)
            str_copy(key, reason[0] ? reason : "(no attempt yet)", sizeof(key));
        else
            addr_domain(r->addr, key, sizeof(key));
        struct srow *row = stable_get(&x->rows, key);
        if (!row)
            continue;
        bool dup = false;
        for (size_t k = 0; k < n_seen && !dup; k++)
            dup = seen[k] == row->key;
        if (dup)
            continue;
        if (n_seen < sizeof(seen) / sizeof(seen[0]))
            seen[n_seen++] = row->key;
        srow_add(row, bucket);
    }
    return 0;
}

static json_t *srow_json(const struct srow *r, const char *keyname)
{
    json_t *o = json_object();
    if (keyname)
        json_object_set_new(o, keyname, jstr(r->key));
    json_object_set_new(o, "total", json_integer((json_int_t)r->total));
    json_t *b = json_array();
    for (int i = 0; i < QSHAPE_BUCKETS; i++)
        json_array_append_new(b, json_integer((json_int_t)r->b[i]));
    json_object_set_new(o, "buckets", b);
    return o;
}

static void srow_print(const struct srow *r, const char *label, int width)
{
    printf("%*.*s %6llu", width, width, label, (unsigned long long)r->total);
    for (int i = 0; i < QSHAPE_BUCKETS; i++)
        printf(" %5llu", (unsigned long long)r->b[i]);
    printf("\n");
}

struct sum_opts {
    bool json, by_reason;
};

static int sum_arg(void *arg, int argc, char **argv, int *i)
{
    struct sum_opts *o = arg;
    if (strcmp(argv[*i], "--json") == 0) {
        o->json = true;
    } else if (strcmp(argv[*i], "--by") == 0) {
        if (*i + 1 >= argc ||
            (strcmp(argv[*i + 1], "domain") != 0 && strcmp(argv[*i + 1], "reason") != 0)) {
            fprintf(stderr, "convoyctl: --by takes domain or reason\n");
            return -1;
        }
        o->by_reason = strcmp(argv[++*i], "reason") == 0;
    } else {
        return 0;
    }
    return 1;
}

/* The destinations the running daemon has marked dead
 * (smtp_destination_dead_threshold), from `status`; NULL when convoyd is
 * not running (no control socket: nothing is printed about it). */
static json_t *dead_destinations(const struct conf *c)
{
    char path[256];
    struct stat st;
    if (settings_control_socket_path(c, path, sizeof(path)) != 0 || stat(path, &st) != 0)
        return NULL;
    json_t *req = json_pack("{s:s}", CTL_F_CMD, CTL_CMD_STATUS);
    json_t *resp = NULL;
    int rc = ctl_request(c, req, &resp, 5000);
    json_decref(req);
    if (rc != 0 || !resp)
        return NULL;
    json_t *dead = json_object_get(resp, "dead");
    if (json_is_array(dead))
        json_incref(dead);
    else
        dead = NULL;
    json_decref(resp);
    return dead;
}

static int cmd_summary(struct conf *c, int argc, char **argv)
{
    struct qfilter f;
    struct sum_opts so = {0};
    struct queue *q = NULL;
    int rc = open_filtered(c, argc, argv, sum_arg, &so, &f, &q);
    if (rc)
        return rc;
    struct sum_ctx x = {.f = &f, .now = time_now_ms(), .by_reason = so.by_reason};
    x.total.key = (char *)"TOTAL";
    rc = queue_list(q, NULL, sum_one, &x);
    queue_close(q);
    qfilter_free(&f);
    if (rc && rc != ERR_CORRUPT) {
        fprintf(stderr, "convoyctl: queue: %s\n", err_str(rc));
        stable_free(&x.rows);
        stable_free(&x.reasons);
        return 1;
    }
    if (x.rows.n)
        qsort(x.rows.rows, x.rows.n, sizeof(*x.rows.rows), srow_cmp);
    if (x.reasons.n)
        qsort(x.reasons.rows, x.reasons.n, sizeof(*x.reasons.rows), srow_cmp);
    size_t top = x.reasons.n < TOP_REASONS ? x.reasons.n : TOP_REASONS;
    const char *keyname = so.by_reason ? "reason" : "domain";
    json_t *dead = dead_destinations(c);
    if (so.json) {
        json_t *o = json_object();
        json_object_set_new(o, "version", json_integer(CTL_QUEUE_JSON_VERSION));
        json_object_set_new(o, "by", json_string(keyname));
        json_t *cols = json_array();
        for (int i = 0; i < QSHAPE_BUCKETS; i++)
            json_array_append_new(cols, json_string(qshape_labels[i]));
        json_object_set_new(o, "columns", cols);
        json_object_set_new(o, "total", srow_json(&x.total, NULL));
        json_t *rows = json_array();
        for (size_t i = 0; i < x.rows.n; i++)
            json_array_append_new(rows, srow_json(&x.rows.rows[i], keyname));
        json_object_set_new(o, "rows", rows);
        json_t *tr = json_array();
        for (size_t i = 0; i < top; i++)
            json_array_append_new(tr, json_pack("{s:o, s:I}", "reason", jstr(x.reasons.rows[i].key),
                                                "recipients", (json_int_t)x.reasons.rows[i].total));
        json_object_set_new(o, "top_deferral_reasons", tr);
        if (dead)
            json_object_set(o, "dead", dead);
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
        printf("%s\n", s ? s : "{}");
        free(s);
    } else {
        int width = so.by_reason ? 48 : 28;
        printf("%*s %6s", width, "", "T");
        for (int i = 0; i < QSHAPE_BUCKETS; i++)
            printf(" %5s", qshape_labels[i]);
        printf("\n");
        srow_print(&x.total, "TOTAL", width);
        for (size_t i = 0; i < x.rows.n; i++)
            srow_print(&x.rows.rows[i], x.rows.rows[i].key, width);
        if (!so.by_reason && top) {
            printf("\ntop deferral reasons (recipients):\n");
            for (size_t i = 0; i < top; i++)
                printf("%6llu  %s\n", (unsigned long long)x.reasons.rows[i].total,
                       x.reasons.rows[i].key);
        }
        if (dead && json_array_size(dead) > 0) {
            printf("\ndead destinations (deferred without connecting):\n");
            size_t i;
            json_t *d;
            json_array_foreach(dead, i, d)
            {
                json_int_t until = json_integer_value(json_object_get(d, "until"));
                json_int_t left = until - (json_int_t)(time_now_ms() / 1000);
                printf("  %s  %lld failed attempts, %s%llds\n",
                       json_string_value(json_object_get(d, "destination")),
                       (long long)json_integer_value(json_object_get(d, "failures")),
                       json_is_true(json_object_get(d, "probing")) ? "probing, next in "
                                                                   : "next probe in ",
                       (long long)(left > 0 ? left : 0));
            }
        }
    }
    json_decref(dead);
    if (x.rows.overflow)
        fprintf(stderr, "convoyctl: more than %d rows; the rest are counted in TOTAL only\n",
                SUMMARY_ROWS_MAX);
    stable_free(&x.rows);
    stable_free(&x.reasons);
    if (rc == ERR_CORRUPT) {
        fprintf(stderr, "convoyctl: queue: some records do not decode and were skipped\n");
        return 1;
    }
    return fflush(stdout) != 0 ? 1 : 0;
}

/* ---- show ----------------------------------------------------------------------- */

enum part { PART_ALL, PART_HEADERS, PART_BODY };

/* Stream the message (or its header section, or its body) to out, or into
 * a buffer when out is NULL. The header section ends at the first empty
 * line (CRLF or LF), which belongs to it. */
static int read_message(struct queue *q, const char *id, uint64_t size, enum part part, FILE *out,
                        struct buf *into)
{
    static char chunk[QUEUE_CHUNK];
    uint64_t off = 0;
    size_t line_len = 0;
    bool in_headers = true;
    while (off < size) {
        size_t got = 0;
        int rc = queue_body_read(q, id, off, chunk, sizeof(chunk), &got);
        if (rc)
            return rc;
        if (got == 0)
            return ERR_CORRUPT;
        off += got;
        size_t start = 0, end = got;
        if (part != PART_ALL) {
            size_t i = 0;
            for (; i < got && in_headers; i++) {
                if (chunk[i] == '\n') {
                    if (line_len == 0)
                        in_headers = false;
                    line_len = 0;
                } else if (chunk[i] != '\r') {
                    line_len++;
                }
            }
            /* Bytes [0, i) were headers (while in_headers was true). */
            size_t split = in_headers ? got : i;
            if (part == PART_HEADERS) {
                end = split;
            } else {
                start = split;
            }
        }
        if (end > start) {
            if (out)
                fwrite(chunk + start, 1, end - start, out);
            else if (buf_append(into, chunk + start, end - start) != 0)
                return ERR_TOOBIG;
        }
        if (part == PART_HEADERS && !in_headers)
            break;
    }
    return 0;
}

static void print_result(const char *indent, const struct queue_result *l)
{
    char when[32];
    iso_time(l->when_ms, when, sizeof(when));
    printf("%s%s ", indent, when);
    if (l->smtp_code)
        printf("%d ", l->smtp_code);
    printf("%s ", l->dsn[0] ? l->dsn : "-");
    print_oneline(stdout, l->text);
    printf("\n");
    if (l->mx[0] || l->ip[0] || l->tls[0] || l->sts_mode[0]) {
        printf("%s  ", indent);
        if (l->mx[0] || l->ip[0])
            printf("mx=%s[%s] ", l->mx[0] ? l->mx : "-", l->ip);
        if (l->tls[0]) {
            printf("tls=");
            print_oneline(stdout, l->tls);
            printf(" ");
        }
        if (l->sts_mode[0])
            printf("mta-sts=%s%s%s", l->sts_mode, l->sts_id[0] ? " id=" : "", l->sts_id);
        printf("\n");
    }
}

static int cmd_show(struct conf *c, int argc, char **argv)
{
    const char *id = NULL;
    bool json = false;
    enum part part = PART_ALL;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = true;
        } else if (strcmp(argv[i], "--headers") == 0) {
            part = PART_HEADERS;
        } else if (strcmp(argv[i], "--body") == 0) {
            part = PART_BODY;
        } else if (!id && argv[i][0] != '-') {
            id = argv[i];
        } else {
            queue_usage();
            return EXIT_USAGE;
        }
    }
    if (!id) {
        queue_usage();
        return EXIT_USAGE;
    }
    if (!queue_id_valid(id)) {
        fprintf(stderr, "convoyctl: not a queue ID: %s\n", id);
        return EXIT_USAGE;
    }
    struct queue *q;
    if (open_ro(c, &q))
        return 1;
    struct queue_message *m = NULL;
    int rc = queue_message_read(q, id, &m);
    if (rc) {
        fprintf(stderr, "convoyctl: %s: %s\n", id,
                rc == ERR_NOTFOUND ? "no such message in the queue" : err_str(rc));
        queue_close(q);
        return 1;
    }
    if (json) {
        json_t *o = message_json(m);
        struct buf text;
        buf_init(&text, (size_t)m->env.size + 1);
        rc = read_message(q, id, m->env.size, part, NULL, &text);
        static const char *const names[] = {"message", "headers", "body"};
        json_object_set_new(o, names[part],
                            rc ? json_null() : jstrn(text.data ? text.data : "", text.len));
        /* Each recipient's earlier results (show only: list stays lean). */
        json_t *rs = json_object_get(o, "recipients");
        for (size_t i = 0; i < m->n_rcpts; i++) {
            json_t *h = json_array();
            for (size_t k = 0; k < m->rcpts[i].n_history; k++)
                json_array_append_new(h, result_json(&m->rcpts[i].history[k]));
            json_object_set_new(json_array_get(rs, i), "history", h);
        }
        buf_free(&text);
        char *s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
        printf("%s\n", s ? s : "{}");
        free(s);
    } else {
        char when[32];
        iso_time(m->env.arrival_ms, when, sizeof(when));
        char age[32];
        time_format_duration((time_now_ms() - m->env.arrival_ms) / 1000, age, sizeof(age));
        printf("id: %s\nsize: %llu\narrival: %s (%s ago)\nsender: <", m->id,
               (unsigned long long)m->env.size, when, age);
        print_oneline(stdout, m->env.sender);
        printf(">\nclient: ");
        print_oneline(stdout, m->env.client_name);
        printf("[");
        print_oneline(stdout, m->env.client_addr);
        printf("] helo=");
        print_oneline(stdout, m->env.helo);
        if (m->env.auth_user[0]) {
            printf(" auth=");
            print_oneline(stdout, m->env.auth_user);
        }
        if (m->env.tls[0]) {
            printf(" tls=");
            print_oneline(stdout, m->env.tls);
        }
        printf("\n");
        if (m->env.envid[0]) {
            printf("envid: ");
            print_oneline(stdout, m->env.envid);
            printf("\n");
        }
        if (m->env.ret)
            printf("ret: %s\n", m->env.ret == QUEUE_RET_FULL ? "FULL" : "HDRS");
        if (m->env.flags & (QUEUE_F_SMTPUTF8 | QUEUE_F_8BITMIME | QUEUE_F_TLS_OPTIONAL))
            printf("flags:%s%s%s\n", m->env.flags & QUEUE_F_SMTPUTF8 ? " SMTPUTF8" : "",
                   m->env.flags & QUEUE_F_8BITMIME ? " 8BITMIME" : "",
                   m->env.flags & QUEUE_F_TLS_OPTIONAL ? " TLS-REQUIRED-NO" : "");
        printf("recipients:\n");
        for (size_t i = 0; i < m->n_rcpts; i++) {
            const struct queue_rcpt *r = &m->rcpts[i];
            printf("  ");
            print_oneline(stdout, r->addr);
            printf(": %s, %u attempt%s", queue_rcpt_state_name(r->state), r->attempts,
                   r->attempts == 1 ? "" : "s");
            if (r->next_ms) {
                char next[32];
                iso_time(r->next_ms, next, sizeof(next));
                bool in_flight = r->state == QUEUE_RCPT_ACTIVE || r->state == QUEUE_RCPT_HELD;
                printf(", %s %s", in_flight ? "in flight until" : "next attempt", next);
            }
            printf("\n");
            if (r->orcpt[0]) {
                printf("    orcpt: ");
                print_oneline(stdout, r->orcpt);
                printf("\n");
            }
            if (r->has_result) {
                printf("    results, oldest first (at most %d kept):\n", QUEUE_HISTORY_MAX);
                for (size_t k = 0; k < r->n_history; k++)
                    print_result("      ", &r->history[k]);
                print_result("      ", &r->last);
            }
        }
        static const char *const titles[] = {"message", "headers", "body"};
        printf("--- %s ---\n", titles[part]);
        fflush(stdout);
        rc = read_message(q, id, m->env.size, part, stdout, NULL);
    }
    queue_message_free(m);
    queue_close(q);
    if (rc) {
        fprintf(stderr, "convoyctl: %s: cannot read the message: %s\n", id, err_str(rc));
        return 1;
    }
    return fflush(stdout) != 0 ? 1 : 0;
}

/* ---- actions ---------------------------------------------------------------------- */

struct action_def {
    const char *name;
    const char *cmd;
    const char *done;  /* "Held" */
    const char *would; /* "hold" */
};

static const struct action_def actions[] = {
    {"retry", CTL_CMD_QUEUE_RETRY, "Retried", "retry"},
    {"hold", CTL_CMD_QUEUE_HOLD, "Held", "hold"},
    {"release", CTL_CMD_QUEUE_RELEASE, "Released", "release"},
    {"delete", CTL_CMD_QUEUE_DELETE, "Deleted", "delete"},
    {"bounce", CTL_CMD_QUEUE_BOUNCE, "Bounced", "bounce"},
};

struct idlist {
    char (*v)[QUEUE_ID_LEN + 1];
    size_t n, cap;
};

static int idlist_push(struct idlist *l, const char *id)
{
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        void *nv = realloc(l->v, ncap * sizeof(*l->v));
        if (!nv)
            return ERR_NOMEM;
        l->v = nv;
        l->cap = ncap;
    }
    str_copy(l->v[l->n++], id, sizeof(l->v[0]));
    return 0;
}

/* Add id unless it is there already (IDs named by hand, a few). */
static int idlist_add(struct idlist *l, const char *id)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], id) == 0)
            return 0;
    return idlist_push(l, id);
}

struct act_opts {
    bool dry_run, all, yes, stdin_ids;
    const char *reason;
    struct idlist ids;
};

static int act_arg(void *arg, int argc, char **argv, int *i)
{
    struct act_opts *o = arg;
    const char *a = argv[*i];
    if (strcmp(a, "--dry-run") == 0 || strcmp(a, "-n") == 0) {
        o->dry_run = true;
    } else if (strcmp(a, "--all") == 0) {
        o->all = true;
    } else if (strcmp(a, "--yes") == 0 || strcmp(a, "-y") == 0) {
        o->yes = true;
    } else if (strcmp(a, "--why") == 0) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "convoyctl: --why needs a value\n");
            return -1;
        }
        o->reason = argv[++*i];
    } else if (strcmp(a, "-") == 0) {
        o->stdin_ids = true;
    } else if (a[0] != '-') {
        if (!queue_id_valid(a)) {
            fprintf(stderr, "convoyctl: not a queue ID: %s\n", a);
            return -1;
        }
        if (idlist_add(&o->ids, a))
            return -1;
    } else {
        return 0;
    }
    return 1;
}

/* IDs from standard input: the first word of each line (so `queue list`
 * output can be piped in), or the "id" of a JSON line (`list --json`). */
static int read_stdin_ids(struct idlist *l)
{
    char line[8192];
    unsigned long lineno = 0;
    while (fgets(line, sizeof(line), stdin)) {
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\n' || *p == '\r' || *p == 0 || strncmp(p, "-- ", 3) == 0 ||
            strncmp(p, "queue is empty", 14) == 0 || strncmp(p, "no message matches", 18) == 0)
            continue;
        char id[QUEUE_ID_LEN + 1] = "";
        if (*p == '{') {
            json_error_t e;
            json_t *o = json_loads(p, 0, &e);
            const char *s = json_string_value(json_object_get(o, "id"));
            if (s)
                str_copy(id, s, sizeof(id));
            if (s && strlen(s) != QUEUE_ID_LEN)
                id[0] = 0;
            json_decref(o);
        } else {
            size_t n = strcspn(p, " \t\r\n");
            if (n == QUEUE_ID_LEN) {
                memcpy(id, p, n);
                id[n] = 0;
            }
        }
        if (!queue_id_valid(id)) {
            fprintf(stderr, "convoyctl: standard input line %lu: no queue ID\n", lineno);
            return EXIT_USAGE;
        }
        if (idlist_add(l, id))
            return 1;
    }
    return 0;
}

struct select_ctx {
    const struct qfilter *f;
    int64_t now;
    struct idlist *ids;
    bool print;
    size_t found;
    int err;
};

static int select_one(void *arg, const struct queue_message *m)
{
    struct select_ctx *x = arg;
    if (!qfilter_match(x->f, m, x->now))
        return 0;
    if (idlist_push(x->ids, m->id)) {
        x->err = ERR_NOMEM;
        return 1;
    }
    if (x->print)
        print_plain(m);
    return 0;
}

static void print_count(const char *verb, size_t n)
{
    printf("%s %zu message%s.\n", verb, n, n == 1 ? "" : "s");
}

static int cmd_action(struct conf *c, const struct action_def *def, int argc, char **argv)
{
    struct qfilter f;
    qfilter_init(&f);
    struct act_opts o = {0};
    int rc = parse_args(&f, argc, argv, 2, act_arg, &o);
    bool by_id = o.ids.n > 0 || o.stdin_ids;
    if (rc == 0 && by_id && (f.any || o.all)) {
        fprintf(stderr,
                "convoyctl: queue %s: name messages by ID (or -) or by filter options, "
                "not both\n",
                def->name);
        rc = 2;
    }
    if (rc == 0 && !by_id && !f.any && !o.all) {
        fprintf(stderr,
                "convoyctl: queue %s: which messages? Give IDs, - (IDs on standard "
                "input), filter options, or --all --yes\n",
                def->name);
        rc = 2;
    }
    if (rc == 0 && o.all && !f.any && !o.yes && !o.dry_run) {
        fprintf(stderr,
                "convoyctl: queue %s --all acts on every message in the queue; add "
                "--yes to confirm (or --dry-run to see them)\n",
                def->name);
        rc = 2;
    }
    if (rc == 0 && o.reason && strcmp(def->name, "bounce") != 0) {
        fprintf(stderr, "convoyctl: --why is for queue bounce (the text of the DSN)\n");
        rc = 2;
    }
    if (rc == 0 && o.stdin_ids)
        rc = read_stdin_ids(&o.ids);
    struct queue *q = NULL;
    bool need_list = !by_id || o.dry_run;
    if (rc == 0 && need_list)
        rc = open_ro(c, &q);
    struct select_ctx sx = {.f = &f, .now = time_now_ms(), .ids = &o.ids, .print = o.dry_run};
    if (rc == 0 && by_id && o.dry_run) {
        /* Named messages: look each one up. */
        for (size_t i = 0; i < o.ids.n; i++) {
            struct queue_message *m = NULL;
            if (queue_message_read(q, o.ids.v[i], &m) == 0) {
                sx.found++;
                print_plain(m);
            }
            queue_message_free(m);
        }
    } else if (rc == 0 && need_list) {
        int lrc = queue_list(q, NULL, select_one, &sx);
        if (lrc == ERR_CORRUPT)
            fprintf(stderr, "convoyctl: queue: some records do not decode and were skipped\n");
        else if (lrc || sx.err)
            rc = 1;
        if (rc)
            fprintf(stderr, "convoyctl: queue: %s\n", err_str(lrc ? lrc : sx.err));
    }
    queue_close(q);
    qfilter_free(&f);
    if (rc) {
        free(o.ids.v);
        return rc;
    }
    if (o.dry_run) {
        size_t n = by_id ? sx.found : o.ids.n;
        if (by_id && sx.found < o.ids.n)
            fprintf(stderr, "convoyctl: %zu of the IDs given are not in the queue\n",
                    o.ids.n - sx.found);
        printf("Would %s %zu message%s.\n", def->would, n, n == 1 ? "" : "s");
        free(o.ids.v);
        return 0;
    }
    size_t done = 0, rcpts = 0, missing = 0, skipped = 0, failed = 0;
    for (size_t at = 0; at < o.ids.n && rc == 0; at += ACTION_BATCH) {
        size_t end = at + ACTION_BATCH < o.ids.n ? at + ACTION_BATCH : o.ids.n;
        json_t *ids = json_array();
        for (size_t i = at; i < end; i++)
            json_array_append_new(ids, json_string(o.ids.v[i]));
        json_t *req = json_pack("{s:s, s:o}", CTL_F_CMD, def->cmd, CTL_F_IDS, ids);
        if (o.reason)
            json_object_set_new(req, CTL_F_REASON, json_string(o.reason));
        json_t *resp = NULL;
        rc = ctl_request(c, req, &resp, 300000);
        json_decref(req);
        if (rc == EXIT_NOT_RUNNING) {
            fprintf(stderr,
                    "convoyctl: queue %s changes the queue, which needs convoyd; start "
                    "it and try again (looking at the queue works without it)\n",
                    def->name);
            break;
        }
        if (rc)
            break;
        if (!json_is_true(json_object_get(resp, CTL_F_OK))) {
            const char *e = json_string_value(json_object_get(resp, CTL_F_ERROR));
            fprintf(stderr, "convoyctl: queue %s: %s\n", def->name, e ? e : "failed");
            json_decref(resp);
            rc = 1;
            break;
        }
        done += (size_t)json_integer_value(json_object_get(resp, CTL_F_DONE));
        rcpts += (size_t)json_integer_value(json_object_get(resp, CTL_F_RECIPIENTS));
        size_t k;
        json_t *v;
        json_array_foreach(json_object_get(resp, CTL_F_MISSING), k, v)
        {
            missing++;
            if (by_id)
                fprintf(stderr, "convoyctl: %s: no such message in the queue\n",
                        json_string_value(v));
        }
        json_array_foreach(json_object_get(resp, CTL_F_SKIPPED), k, v)
        {
            skipped++;
            fprintf(stderr,
                    "convoyctl: %s: not bounced: every open recipient is being delivered now\n",
                    json_string_value(v));
        }
        json_array_foreach(json_object_get(resp, CTL_F_FAILED), k, v)
        {
            failed++;
            fprintf(stderr, "convoyctl: %s: %s\n", json_string_value(json_object_get(v, CTL_F_ID)),
                    json_string_value(json_object_get(v, CTL_F_ERROR)));
        }
        json_decref(resp);
    }
    free(o.ids.v);
    if (rc)
        return rc;
    if (strcmp(def->name, "bounce") == 0)
        printf("Bounced %zu message%s (%zu recipient%s).\n", done, done == 1 ? "" : "s", rcpts,
               rcpts == 1 ? "" : "s");
    else if (strcmp(def->name, "retry") == 0)
        printf("Scheduled %zu message%s for delivery now.\n", done, done == 1 ? "" : "s");
    else
        print_count(def->done, done);
    if (missing && !by_id)
        printf("(%zu message%s left the queue meanwhile.)\n", missing, missing == 1 ? "" : "s");
    return failed || skipped || (missing && by_id) ? 1 : 0;
}

int ctl_queue(struct conf *c, int argc, char **argv)
{
    if (argc < 2) {
        queue_usage();
        return EXIT_USAGE;
    }
    if (strcmp(argv[1], "list") == 0)
        return cmd_list(c, argc, argv);
    if (strcmp(argv[1], "summary") == 0)
        return cmd_summary(c, argc, argv);
    if (strcmp(argv[1], "show") == 0)
        return cmd_show(c, argc, argv);
    for (size_t i = 0; i < sizeof(actions) / sizeof(actions[0]); i++)
        if (strcmp(argv[1], actions[i].name) == 0)
            return cmd_action(c, &actions[i], argc, argv);
    if (strcmp(argv[1], "help") != 0)
        fprintf(stderr, "convoyctl: queue: unknown subcommand \"%s\"\n", argv[1]);
    queue_usage();
    return EXIT_USAGE;
}
