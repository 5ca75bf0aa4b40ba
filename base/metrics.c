/*
 * metrics.c - the registry of Convoy's Prometheus series (see base.h) and
 * their rendering in the text exposition format, version 0.0.4:
 *
 *   # HELP name text          (backslash and newline escaped)
 *   # TYPE name counter|gauge|histogram
 *   name{label="value",...} number
 *
 * A histogram renders name_bucket{le="..."} cumulatively, ending with
 * le="+Inf", then name_sum and name_count.
 *
 * Invariants: one mutex guards every value, so updates and a rendering can
 * come from any thread; a series never holds more than METRICS_MAX_CHILDREN
 * label pairs (memory stays bounded whatever the peers do); label values are
 * escaped (backslash, double quote, newline) when rendered.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

enum mtype { T_COUNTER, T_GAUGE, T_HIST };

static const double hist_commit[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512};
static const double hist_latency[] = {1, 5, 30, 60, 300, 900, 3600, 14400, 86400, 432000};
static const double hist_rtt[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                  0.005,  0.01,    0.025,  0.1,   0.25};
#define NBOUNDS_MAX 10

#define TYPE_COUNTER T_COUNTER, NULL, 0
#define TYPE_GAUGE T_GAUGE, NULL, 0
#define TYPE_HIST_COMMIT T_HIST, hist_commit, sizeof(hist_commit) / sizeof(double)
#define TYPE_HIST_LATENCY T_HIST, hist_latency, sizeof(hist_latency) / sizeof(double)
#define TYPE_HIST_RTT T_HIST, hist_rtt, sizeof(hist_rtt) / sizeof(double)

struct family {
    const char *name, *help, *l1, *l2;
    enum mtype type;
    const double *bounds;
    size_t n_bounds;
};

#define METRIC_ROW(id, type, name, help, l1, l2) {name, help, l1, l2, TYPE_##type},
static const struct family families[MET_COUNT] = {CONVOY_METRICS(METRIC_ROW)};
#undef METRIC_ROW

struct child {
    char *v1, *v2;
    double value; /* counter, gauge; sum of a histogram */
    uint64_t count;
    uint64_t buckets[NBOUNDS_MAX];
};

struct series {
    struct child children[METRICS_MAX_CHILDREN];
    size_t n;
};

static struct series values[MET_COUNT];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    metrics_collector fn;
    void *arg;
} collectors[16];
static size_t n_collectors;

static bool same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* The child for the label values, made on first use; with the lock held.
 * NULL only when memory runs out. */
static struct child *child_of(enum metric_id id, const char *l1, const char *l2)
{
    const struct family *f = &families[id];
    struct series *s = &values[id];
    /* Values for labels the series does not have are dropped; missing
     * values for labels it has become "". */
    l1 = f->l1 ? (l1 ? l1 : "") : NULL;
    l2 = f->l2 ? (l2 ? l2 : "") : NULL;
    for (;;) {
        for (size_t i = 0; i < s->n; i++)
            if (same(s->children[i].v1, l1) && same(s->children[i].v2, l2))
                return &s->children[i];
        if (s->n < METRICS_MAX_CHILDREN - 1 ||
            (s->n == METRICS_MAX_CHILDREN - 1 && same(l1, f->l1 ? "other" : NULL) &&
             same(l2, f->l2 ? "other" : NULL)))
            break;
        /* Full: the last slot is kept for "other". */
        l1 = f->l1 ? "other" : NULL;
        l2 = f->l2 ? "other" : NULL;
    }
    struct child *c = &s->children[s->n];
    memset(c, 0, sizeof(*c));
    c->v1 = l1 ? strdup(l1) : NULL;
    c->v2 = l2 ? strdup(l2) : NULL;
    if ((l1 && !c->v1) || (l2 && !c->v2)) {
        free(c->v1);
        free(c->v2);
        return NULL;
    }
    s->n++;
    return c;
}

void metric_add(enum metric_id id, const char *l1, const char *l2, double v)
{
    if ((unsigned)id >= MET_COUNT || families[id].type == T_HIST)
        return;
    if (families[id].type == T_COUNTER && !(v >= 0))
        return; /* a counter only goes up */
    pthread_mutex_lock(&lock);
    struct child *c = child_of(id, l1, l2);
    if (c)
        c->value += v;
    pthread_mutex_unlock(&lock);
}

void metric_set(enum metric_id id, const char *l1, const char *l2, double v)
{
    if ((unsigned)id >= MET_COUNT || families[id].type != T_GAUGE)
        return;
    pthread_mutex_lock(&lock);
    struct child *c = child_of(id, l1, l2);
    if (c)
        c->value = v;
    pthread_mutex_unlock(&lock);
}

void metric_clear(enum metric_id id)
{
    if ((unsigned)id >= MET_COUNT || families[id].type != T_GAUGE)
        return;
    pthread_mutex_lock(&lock);
    struct series *s = &values[id];
    for (size_t i = 0; i < s->n; i++) {
        free(s->children[i].v1);
        free(s->children[i].v2);
    }
    s->n = 0;
    pthread_mutex_unlock(&lock);
}

void metric_observe(enum metric_id id, const char *l1, const char *l2, double v)
{
    if ((unsigned)id >= MET_COUNT || families[id].type != T_HIST || isnan(v))
        return;
    const struct family *f = &families[id];
    pthread_mutex_lock(&lock);
    struct child *c = child_of(id, l1, l2);
    if (c) {
        /* Buckets are stored per bound, made cumulative when rendered. */
        size_t b = 0;
        while (b < f->n_bounds && v > f->bounds[b])
            b++;
        if (b < f->n_bounds)
            c->buckets[b]++;
        c->count++;
        c->value += v;
    }
    pthread_mutex_unlock(&lock);
}

void metrics_add_collector(metrics_collector fn, void *arg)
{
    pthread_mutex_lock(&lock);
    if (n_collectors < sizeof(collectors) / sizeof(collectors[0])) {
        collectors[n_collectors].fn = fn;
        collectors[n_collectors].arg = arg;
        n_collectors++;
    }
    pthread_mutex_unlock(&lock);
}

const char *metric_name(enum metric_id id)
{
    return (unsigned)id < MET_COUNT ? families[id].name : NULL;
}

/* ---- rendering --------------------------------------------------------- */

static int put_escaped(struct buf *out, const char *s, bool quote)
{
    int rc = 0;
    for (; *s && rc == 0; s++) {
        if (*s == '\\')
            rc = buf_append_str(out, "\\\\");
        else if (*s == '\n')
            rc = buf_append_str(out, "\\n");
        else if (*s == '"' && quote)
            rc = buf_append_str(out, "\\\"");
        else
            rc = buf_append(out, s, 1);
    }
    return rc;
}

static int put_number(struct buf *out, double v)
{
    if (isinf(v))
        return buf_append_str(out, v > 0 ? "+Inf" : "-Inf");
    if (isnan(v))
        return buf_append_str(out, "NaN");
    if (v == floor(v) && fabs(v) < 9e15)
        return buf_printf(out, "%.0f", v);
    return buf_printf(out, "%.17g", v);
}

/* name{l1="v1",l2="v2"[,le="x"]} or name when there are no labels. */
static int put_sample_name(struct buf *out, const struct family *f, const char *suffix,
                           const struct child *c, const char *le)
{
    int rc = buf_printf(out, "%s%s", f->name, suffix);
    bool any = false;
    const char *names[3] = {f->l1, f->l2, le ? "le" : NULL};
    const char *vals[3] = {c->v1, c->v2, le};
    for (int i = 0; i < 3 && rc == 0; i++) {
        if (!names[i])
            continue;
        rc = buf_printf(out, "%s%s=\"", any ? "," : "{", names[i]);
        if (rc == 0)
            rc = put_escaped(out, vals[i] ? vals[i] : "", true);
        if (rc == 0)
            rc = buf_append_str(out, "\"");
        any = true;
    }
    if (rc == 0 && any)
        rc = buf_append_str(out, "}");
    return rc;
}

static int render_family(struct buf *out, enum metric_id id)
{
    const struct family *f = &families[id];
    const struct series *s = &values[id];
    static const char *const type_words[] = {"counter", "gauge", "histogram"};
    int rc = buf_printf(out, "# HELP %s ", f->name);
    if (rc == 0)
        rc = put_escaped(out, f->help, false);
    if (rc == 0)
        rc = buf_printf(out, "\n# TYPE %s %s\n", f->name, type_words[f->type]);
    /* A series without labels always has its one sample, 0 until used. */
    struct child zero = {0};
    size_t n = s->n;
    const struct child *first = s->children;
    if (n == 0 && !f->l1) {
        first = &zero;
        n = 1;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        const struct child *c = &first[i];
        if (f->type != T_HIST) {
            rc = put_sample_name(out, f, "", c, NULL);
            if (rc == 0)
                rc = buf_append_str(out, " ");
            if (rc == 0)
                rc = put_number(out, c->value);
            if (rc == 0)
                rc = buf_append_str(out, "\n");
            continue;
        }
        uint64_t cum = 0;
        for (size_t b = 0; b <= f->n_bounds && rc == 0; b++) {
            char le[32];
            if (b < f->n_bounds) {
                cum += c->buckets[b];
                snprintf(le, sizeof(le), "%g", f->bounds[b]);
            } else {
                cum = c->count;
                snprintf(le, sizeof(le), "+Inf");
            }
            rc = put_sample_name(out, f, "_bucket", c, le);
            if (rc == 0)
                rc = buf_printf(out, " %llu\n", (unsigned long long)cum);
        }
        if (rc == 0)
            rc = put_sample_name(out, f, "_sum", c, NULL);
        if (rc == 0)
            rc = buf_append_str(out, " ");
        if (rc == 0)
            rc = put_number(out, c->value);
        if (rc == 0)
            rc = buf_append_str(out, "\n");
        if (rc == 0)
            rc = put_sample_name(out, f, "_count", c, NULL);
        if (rc == 0)
            rc = buf_printf(out, " %llu\n", (unsigned long long)c->count);
    }
    return rc;
}

int metrics_render(struct buf *out)
{
    pthread_mutex_lock(&lock);
    size_t n = n_collectors;
    pthread_mutex_unlock(&lock);
    for (size_t i = 0; i < n; i++)
        collectors[i].fn(collectors[i].arg);
    pthread_mutex_lock(&lock);
    int rc = 0;
    for (int id = 0; id < MET_COUNT && rc == 0; id++)
        rc = render_family(out, (enum metric_id)id);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* ---- reason classes and the delivery engine's calls --------------------- */

const char *metrics_reason_class(const char *status)
{
    /* RFC 3463 3: class.subject.detail; the subject says what kind. */
    static const char *const subjects[] = {"other",   "address",  "mailbox", "system",
                                           "network", "protocol", "content", "policy"};
    if (!status || (status[0] != '2' && status[0] != '4' && status[0] != '5') || status[1] != '.' ||
        status[2] < '0' || status[2] > '7' ||
        (status[3] != '.' && !(status[3] >= '0' && status[3] <= '9')))
        return "other";
    if (status[3] != '.')
        return "other"; /* two-digit subjects are not defined */
    return subjects[status[2] - '0'];
}

void metrics_delivery_result(const char *status, const char *dsn, double latency_s)
{
    if (!status)
        return;
    if (strcmp(status, "sent") == 0) {
        metric_add(MET_RCPT_DELIVERED, NULL, NULL, 1);
        if (latency_s >= 0)
            metric_observe(MET_DELIVERY_LATENCY, NULL, NULL, latency_s);
    } else if (strcmp(status, "deferred") == 0) {
        metric_add(MET_RCPT_DEFERRED, metrics_reason_class(dsn), NULL, 1);
    } else if (strcmp(status, "bounced") == 0) {
        metric_add(MET_RCPT_BOUNCED, metrics_reason_class(dsn), NULL, 1);
    }
}

void metrics_delivery_tls(const char *outcome, const char *result_type)
{
    metric_add(MET_TLS_SESSIONS, outcome, result_type ? result_type : "", 1);
}

void metrics_delivery_sts(const char *mode, const char *verdict)
{
    metric_add(MET_STS_VERDICTS, mode, verdict, 1);
}

void metrics_delivery_session(int delta)
{
    metric_add(MET_SESSIONS_OUT, NULL, NULL, delta);
}

void metrics_delivery_cache_hit(void)
{
    metric_add(MET_CONN_CACHE_HITS, NULL, NULL, 1);
}
