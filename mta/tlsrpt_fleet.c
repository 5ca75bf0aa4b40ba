/*
 * tlsrpt_fleet.c - TLS-RPT across a fleet of convoyd sharing one Redis
 * (shared_state; docs/scale-out.md, docs/tlsrpt.md): this node's counts
 * go to Redis as well as to its own store, and at report time one node
 * sends the fleet's combined report.
 *
 * Publishing: the store calls back after each counted session
 * (tlsrpt_store_on_change()); the (day, domain) is marked, and once a
 * second every marked record is written whole to Redis
 * (shared_tlsrpt_publish(): the node's field of the day's hash). After
 * every (re)connect every record of the store is written again, so a node
 * that was cut off adds what it counted meanwhile; records are absolute,
 * so writing one twice counts nothing twice.
 *
 * Sending (tlsrpt_fleet_claim(), used by tlsrpt.c): the claim script
 * decides. Sent by the fleet already, or another node holds the lock: the
 * caller sends nothing. Ours: the other nodes' records (HGETALL) are
 * summed with this node's own record from its store (fresher than what it
 * published), and the caller sends the sum under the fleet's report
 * number. For a full day the sum replaces the node's record in its store
 * (marked as the fleet's, never published), so retries of an https rua
 * and a restart send that same report again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mta.h"
#include "policy.h"
#include "shared.h"

#define COMP "tlsrpt"
/* Marked (day, domain) pairs kept; past this, everything is republished. */
#define DIRTY_MAX 4096

struct mark {
    char day[TLSRPT_DAY_SIZE];
    char domain[POLICY_NAME_MAX];
};

static struct {
    struct mta *m;
    struct tlsrpt_store *store;
    uv_timer_t timer;
    bool timer_on;
    uint64_t generation; /* shared_generation() at the last full publish */
    struct mark *dirty;
    size_t n_dirty;
    bool all_dirty;
} f;

static void on_change(void *arg, const char *day, const char *domain)
{
    (void)arg;
    if (f.all_dirty)
        return;
    for (size_t i = 0; i < f.n_dirty; i++)
        if (strcmp(f.dirty[i].domain, domain) == 0 && strcmp(f.dirty[i].day, day) == 0)
            return;
    if (!f.dirty)
        f.dirty = calloc(DIRTY_MAX, sizeof(*f.dirty));
    if (!f.dirty || f.n_dirty >= DIRTY_MAX) {
        f.all_dirty = true;
        f.n_dirty = 0;
        return;
    }
    struct mark *k = &f.dirty[f.n_dirty++];
    str_copy(k->day, day, sizeof(k->day));
    str_copy(k->domain, domain, sizeof(k->domain));
}

static void publish_one(const char *day, const char *domain)
{
    struct buf rec;
    buf_init(&rec, 1u << 20);
    /* ERR_NOTFOUND: sent and deleted meanwhile; ERR_EXISTS: the record
     * holds the fleet's sum now, not this node's counts. */
    if (tlsrpt_store_record(f.store, day, domain, &rec) == 0)
        shared_tlsrpt_publish(f.m->shared, day, domain, rec.data, rec.len);
    buf_free(&rec);
}

struct marks {
    struct mark *v;
    size_t n, cap;
};

/* Gather every record this node counted itself (LMDB allows one read
 * transaction per thread: publishing reads, so it waits until the walk
 * is over). */
static int gather_cb(void *arg, const struct tlsrpt_summary *sum)
{
    struct marks *ms = arg;
    if (sum->fleet)
        return 0;
    if (ms->n == ms->cap) {
        size_t cap = ms->cap ? ms->cap * 2 : 64;
        struct mark *nv = realloc(ms->v, cap * sizeof(*nv));
        if (!nv)
            return ERR_NOMEM;
        ms->v = nv;
        ms->cap = cap;
    }
    str_copy(ms->v[ms->n].day, sum->day, sizeof(ms->v[ms->n].day));
    str_copy(ms->v[ms->n].domain, sum->domain, sizeof(ms->v[ms->n].domain));
    ms->n++;
    return 0;
}

/* Write what changed (or everything after a reconnect) to Redis. */
static void flush(void)
{
    struct shared *sh = f.m ? f.m->shared : NULL;
    if (!f.store || !shared_up(sh))
        return;
    uint64_t gen = shared_generation(sh);
    if (gen != f.generation || f.all_dirty) {
        struct marks ms = {0};
        if (tlsrpt_store_each(f.store, NULL, gather_cb, &ms) != 0) {
            free(ms.v);
            return; /* again at the next tick */
        }
        f.generation = gen;
        f.all_dirty = false;
        f.n_dirty = 0;
        for (size_t i = 0; i < ms.n; i++)
            publish_one(ms.v[i].day, ms.v[i].domain);
        free(ms.v);
        return;
    }
    for (size_t i = 0; i < f.n_dirty; i++)
        publish_one(f.dirty[i].day, f.dirty[i].domain);
    f.n_dirty = 0;
}

static void timer_cb(uv_timer_t *t)
{
    (void)t;
    flush();
}

void tlsrpt_fleet_start(struct mta *m, struct tlsrpt_store *store)
{
    f.m = m;
    f.store = store;
    f.generation = 0;
    tlsrpt_store_on_change(store, on_change, NULL);
    uv_timer_init(m->loop, &f.timer);
    uv_timer_start(&f.timer, timer_cb, 1000, 1000);
    f.timer_on = true;
}

void tlsrpt_fleet_stop(struct mta *m)
{
    (void)m;
    if (!f.timer_on)
        return;
    uv_timer_stop(&f.timer);
    flush(); /* the last counts, while the connection is still there */
}

void tlsrpt_fleet_close(struct mta *m)
{
    (void)m;
    if (f.timer_on) {
        uv_timer_stop(&f.timer);
        uv_close((uv_handle_t *)&f.timer, NULL);
        f.timer_on = false;
    }
    if (f.store)
        tlsrpt_store_on_change(f.store, NULL, NULL);
    free(f.dirty);
    f.dirty = NULL;
    f.n_dirty = 0;
    f.all_dirty = false;
    f.store = NULL;
    f.m = NULL;
}

/* ---- the claim -------------------------------------------------------------- */

struct claim {
    char day[TLSRPT_DAY_SIZE];
    char domain[POLICY_NAME_MAX];
    bool full;
    uint32_t seq;
    tlsrpt_fleet_cb cb;
    void *arg;
};

static void claim_end(struct claim *c, enum fleet_outcome o, const char *who, const char *sum,
                      size_t len)
{
    c->cb(c->arg, o, c->seq, who, sum, len);
    free(c);
}

static void records_cb(void *arg, int status, size_t n, const char *const *nodes,
                       const char *const *recs, const size_t *lens)
{
    struct claim *c = arg;
    if (status != 0 || !f.store) {
        claim_end(c, FLEET_AWAY, err_str(status ? status : ERR_CLOSED), NULL, 0);
        return;
    }
    /* The other nodes' records as published, and ours from the store:
     * it holds what this node counted since it last published. */
    const char *node = shared_node(f.m->shared);
    const char **rv = calloc(n + 1, sizeof(*rv));
    size_t *lv = calloc(n + 1, sizeof(*lv));
    struct buf own, sum;
    buf_init(&own, 1u << 20);
    buf_init(&sum, 1u << 22);
    size_t k = 0;
    for (size_t i = 0; rv && lv && i < n; i++) {
        if (strcmp(nodes[i], node) == 0)
            continue;
        rv[k] = recs[i];
        lv[k++] = lens[i];
    }
    if (rv && lv && tlsrpt_store_record(f.store, c->day, c->domain, &own) == 0) {
        rv[k] = own.data;
        lv[k++] = own.len;
    }
    int rc = rv && lv ? tlsrpt_record_sum(rv, lv, k, &sum) : ERR_NOMEM;
    if (rc == 0 && c->full)
        rc = tlsrpt_store_put_fleet(f.store, c->day, c->domain, sum.data, sum.len, c->seq);
    log_info(COMP, "domain=%s day=%s: fleet report number %u sums %zu node(s)%s%s", c->domain,
             c->day, c->seq, k, rc ? ": " : "", rc ? err_str(rc) : "");
    if (rc == 0)
        claim_end(c, FLEET_SEND, NULL, sum.data, sum.len);
    else
        claim_end(c, FLEET_AWAY, err_str(rc), NULL, 0);
    buf_free(&own);
    buf_free(&sum);
    free(rv);
    free(lv);
}

static void claim_cb(void *arg, int status, enum shared_claim what, uint32_t seq, const char *who)
{
    struct claim *c = arg;
    if (status != 0) {
        claim_end(c, FLEET_AWAY, err_str(status), NULL, 0);
        return;
    }
    if (what == SHARED_CLAIM_SENT) {
        claim_end(c, FLEET_SENT, who, NULL, 0);
        return;
    }
    if (what == SHARED_CLAIM_BUSY) {
        claim_end(c, FLEET_BUSY, who, NULL, 0);
        return;
    }
    c->seq = seq;
    /* Our latest counts first, so the other nodes see them too. */
    flush();
    if (!f.m || shared_tlsrpt_records(f.m->shared, c->day, c->domain, records_cb, c) != 0)
        claim_end(c, FLEET_AWAY, "shared state went away", NULL, 0);
}

int tlsrpt_fleet_claim(struct mta *m, const char *day, const char *domain, bool full,
                       uint32_t local_seq, tlsrpt_fleet_cb cb, void *arg)
{
    if (!shared_up(m->shared) || !f.store)
        return ERR_AGAIN;
    struct claim *c = calloc(1, sizeof(*c));
    if (!c)
        return ERR_NOMEM;
    str_copy(c->day, day, sizeof(c->day));
    str_copy(c->domain, domain, sizeof(c->domain));
    c->full = full;
    c->cb = cb;
    c->arg = arg;
    int rc = shared_tlsrpt_claim(m->shared, day, domain, full, local_seq, claim_cb, c);
    if (rc != 0)
        free(c);
    return rc;
}

void tlsrpt_fleet_sent(struct mta *m, const char *day, const char *domain, const char *report_id)
{
    shared_tlsrpt_sent(m->shared, day, domain, report_id);
}
