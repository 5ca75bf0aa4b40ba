/*
 * tlsrpt.c - TLS-RPT (RFC 8460) across a fleet: each node's counts of a
 * (day, policy domain) in Redis, and the choice of the one node that
 * sends the day's report (docs/scale-out.md, docs/tlsrpt.md).
 *
 * Keys (DAY is "YYYY-MM-DD", DOMAIN the policy domain, normalised):
 *   convoy:tlsrpt:DAY:DOMAIN       hash: NODE -> that node's record (the
 *                                  text of tlsrpt_store_record()), TTL 4 d
 *   convoy:tlsrpt:lock:DAY:DOMAIN  the node sending now (SET NX PX 10 min)
 *   convoy:tlsrpt:sent:DAY:DOMAIN  the report-id the fleet sent, TTL 4 d
 *   convoy:tlsrpt:seq:DAY:DOMAIN   the fleet's report counter, TTL 4 d
 *
 * Invariants:
 *  - A node writes absolute values, its whole record, never increments:
 *    writing a record again (after a reconnect, or twice) changes nothing,
 *    so a node that was cut off republishes what it counted and nothing is
 *    counted twice. Only the node itself writes its field.
 *  - The claim is one Lua script (atomic in Redis): the day's full report
 *    is claimed by at most one node while the lock lives, and by none once
 *    the sent marker is there. A partial report (a day not over) takes a
 *    number and neither lock nor marker.
 *  - Report numbers come from one counter per (day, domain), never below
 *    the caller's own count, so report-ids are unique across the fleet.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared.h"
#include "shared_int.h"

/* KEYS sent, lock, seq; ARGV node, lock ms, ttl s, min, "full"|"partial".
 * Returns {"sent", who} | {"busy", who} | {"claimed", number}. */
static const char claim_lua[] =
    "if ARGV[5] == 'full' then "
    "local s = redis.call('GET', KEYS[1]) if s then return {'sent', s} end "
    "local l = redis.call('GET', KEYS[2]) "
    "if l and l ~= ARGV[1] then return {'busy', l} end "
    "redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end "
    "local n = redis.call('INCR', KEYS[3]) local min = tonumber(ARGV[4]) "
    "if n <= min then n = min + 1 redis.call('SET', KEYS[3], n) end "
    "redis.call('EXPIRE', KEYS[3], ARGV[3]) "
    "return {'claimed', tostring(n - 1)}";

struct call {
    union {
        shared_claim_cb claim;
        shared_records_cb records;
    } cb;
    void *arg;
};

static void key_of(char *out, size_t size, const char *what, const char *day, const char *domain)
{
    snprintf(out, size, "convoy:tlsrpt:%s%s%.10s:%.253s", what, what[0] ? ":" : "", day, domain);
}

static size_t lens_of(int argc, const char **argv, size_t *lens)
{
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += lens[i] = strlen(argv[i]);
    return total;
}

void shared_tlsrpt_publish(struct shared *s, const char *day, const char *domain, const char *rec,
                           size_t len)
{
    if (!shared_up(s))
        return;
    char k[300], ttl[24];
    key_of(k, sizeof(k), "", day, domain);
    snprintf(ttl, sizeof(ttl), "%d", SHARED_TLSRPT_TTL_S);
    const char *a[4] = {"HSET", k, shared_node(s), rec};
    size_t lens[4];
    lens_of(3, a, lens);
    lens[3] = len;
    int rc = shared_command(s, 4, a, lens, NULL, NULL);
    const char *e[3] = {"EXPIRE", k, ttl};
    size_t elens[3];
    lens_of(3, e, elens);
    if (rc == 0)
        rc = shared_command(s, 3, e, elens, NULL, NULL);
    metric_add(MET_SHARED_TLSRPT, "publish", rc == 0 ? "ok" : "error", 1);
}

static void claim_reply(void *arg, int status, const redisReply *rp)
{
    struct call *c = arg;
    enum shared_claim what = SHARED_CLAIM_OURS;
    uint32_t seq = 0;
    char who[160] = "";
    if (status == 0 &&
        (rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 ||
         rp->element[0]->type != REDIS_REPLY_STRING || rp->element[1]->type != REDIS_REPLY_STRING))
        status = ERR_PROTO;
    if (status == 0) {
        const char *tag = rp->element[0]->str;
        const redisReply *v = rp->element[1];
        snprintf(who, sizeof(who), "%.*s", (int)(v->len < 150 ? v->len : 150), v->str);
        if (strcmp(tag, "sent") == 0) {
            what = SHARED_CLAIM_SENT;
        } else if (strcmp(tag, "busy") == 0) {
            what = SHARED_CLAIM_BUSY;
        } else {
            seq = (uint32_t)strtoul(who, NULL, 10);
            who[0] = '\0';
        }
    }
    static const char *const names[] = {"claimed", "sent-by-fleet", "fleet-busy"};
    metric_add(MET_SHARED_TLSRPT, "claim", status == 0 ? names[what] : "error", 1);
    c->cb.claim(c->arg, status, what, seq, who);
    free(c);
}

int shared_tlsrpt_claim(struct shared *s, const char *day, const char *domain, bool full,
                        uint32_t min_seq, shared_claim_cb cb, void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    struct call *c = calloc(1, sizeof(*c));
    if (!c)
        return ERR_NOMEM;
    c->cb.claim = cb;
    c->arg = arg;
    char ks[300], kl[300], kq[300], lock[24], ttl[24], min[24];
    key_of(ks, sizeof(ks), "sent", day, domain);
    key_of(kl, sizeof(kl), "lock", day, domain);
    key_of(kq, sizeof(kq), "seq", day, domain);
    snprintf(lock, sizeof(lock), "%d", SHARED_TLSRPT_LOCK_MS);
    snprintf(ttl, sizeof(ttl), "%d", SHARED_TLSRPT_TTL_S);
    snprintf(min, sizeof(min), "%u", min_seq);
    const char *a[11] = {"EVAL",
                         claim_lua,
                         "3",
                         ks,
                         kl,
                         kq,
                         shared_node(s),
                         lock,
                         ttl,
                         min,
                         full ? "full" : "partial"};
    size_t lens[11];
    lens_of(11, a, lens);
    int rc = shared_command(s, 11, a, lens, claim_reply, c);
    if (rc != 0)
        free(c);
    return rc;
}

static void records_reply(void *arg, int status, const redisReply *rp)
{
    struct call *c = arg;
    if (status == 0 && rp->type != REDIS_REPLY_ARRAY)
        status = ERR_PROTO;
    size_t n = status == 0 ? rp->elements / 2 : 0;
    const char **nodes = calloc(n ? n : 1, sizeof(*nodes));
    const char **recs = calloc(n ? n : 1, sizeof(*recs));
    size_t *lens = calloc(n ? n : 1, sizeof(*lens));
    if (!nodes || !recs || !lens)
        status = status ? status : ERR_NOMEM;
    size_t m = 0;
    for (size_t i = 0; status == 0 && i < n; i++) {
        const redisReply *k = rp->element[2 * i], *v = rp->element[2 * i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        nodes[m] = k->str; /* hiredis ends every string with a NUL */
        recs[m] = v->str;
        lens[m++] = v->len;
    }
    metric_add(MET_SHARED_TLSRPT, "records", status == 0 ? "ok" : "error", 1);
    c->cb.records(c->arg, status, status == 0 ? m : 0, nodes, recs, lens);
    free(nodes);
    free(recs);
    free(lens);
    free(c);
}

int shared_tlsrpt_records(struct shared *s, const char *day, const char *domain,
                          shared_records_cb cb, void *arg)
{
    if (!shared_up(s))
        return ERR_AGAIN;
    struct call *c = calloc(1, sizeof(*c));
    if (!c)
        return ERR_NOMEM;
    c->cb.records = cb;
    c->arg = arg;
    char k[300];
    key_of(k, sizeof(k), "", day, domain);
    const char *a[2] = {"HGETALL", k};
    size_t lens[2];
    lens_of(2, a, lens);
    int rc = shared_command(s, 2, a, lens, records_reply, c);
    if (rc != 0)
        free(c);
    return rc;
}

void shared_tlsrpt_sent(struct shared *s, const char *day, const char *domain,
                        const char *report_id)
{
    if (!shared_up(s))
        return;
    char ks[300], kl[300], ttl[24];
    key_of(ks, sizeof(ks), "sent", day, domain);
    key_of(kl, sizeof(kl), "lock", day, domain);
    snprintf(ttl, sizeof(ttl), "%d", SHARED_TLSRPT_TTL_S);
    const char *a[5] = {"SET", ks, report_id && *report_id ? report_id : shared_node(s), "EX", ttl};
    size_t lens[5];
    lens_of(5, a, lens);
    int rc = shared_command(s, 5, a, lens, NULL, NULL);
    const char *d[2] = {"DEL", kl};
    size_t dlens[2];
    lens_of(2, d, dlens);
    if (rc == 0)
        rc = shared_command(s, 2, d, dlens, NULL, NULL);
    metric_add(MET_SHARED_TLSRPT, "sent", rc == 0 ? "ok" : "error", 1);
}
