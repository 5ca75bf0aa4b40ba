/*
 * cache.c - the dns module's answer cache: whole answer messages keyed by
 * (lower-cased name, type), each with an expiry, in a hash table with a
 * least-recently-used list. A hit is parsed again by the caller, so the
 * cache holds positive and negative answers the same way.
 *
 * Standards: RFC 1035 3.2.1 and RFC 2181 8 (TTLs: the caller passes the
 * smallest TTL of the records used, capped); RFC 2308 5 (negative answers
 * with the SOA-derived TTL); names compare case-insensitively (RFC 4343).
 *
 * Invariants: count <= max; every entry is on the LRU list and in exactly
 * one bucket; an entry whose expiry has passed is never returned; the time
 * is given by the caller (monotonic ms), so tests can use a fake clock.
 */
#include "dns_int.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "base.h"

struct entry {
    struct entry *hnext;               /* bucket chain */
    struct entry *lru_prev, *lru_next; /* most recent at head */
    uint16_t qtype;
    int64_t expires_ms;
    uint8_t *msg;
    size_t len;
    char name[]; /* lower case, no final dot */
};

struct dns_cache {
    size_t max, count, nbuckets;
    struct entry **buckets;
    struct entry *head, *tail;
};

static void key_name(const char *name, char *out, size_t size)
{
    size_t n = strlen(name);
    if (n > 1 && name[n - 1] == '.')
        n--;
    if (n >= size)
        n = size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)name[i]);
    out[n] = '\0';
}

/* FNV-1a over the key. */
static size_t hash_key(const char *name, uint16_t qtype)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = name; *p; p++) {
        h ^= (unsigned char)*p;
        h *= 1099511628211ULL;
    }
    h ^= qtype;
    h *= 1099511628211ULL;
    return (size_t)h;
}

struct dns_cache *dns_cache_new(size_t max)
{
    struct dns_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->max = max;
    c->nbuckets = 16;
    while (c->nbuckets < max && c->nbuckets < ((size_t)1 << 24))
        c->nbuckets <<= 1;
    c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    return c;
}

static void lru_unlink(struct dns_cache *c, struct entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        c->head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        c->tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_head(struct dns_cache *c, struct entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = c->head;
    if (c->head)
        c->head->lru_prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static struct entry **find_slot(struct dns_cache *c, const char *key, uint16_t qtype)
{
    struct entry **pp = &c->buckets[hash_key(key, qtype) & (c->nbuckets - 1)];
    while (*pp && ((*pp)->qtype != qtype || strcmp((*pp)->name, key) != 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void drop(struct dns_cache *c, struct entry **slot)
{
    struct entry *e = *slot;
    *slot = e->hnext;
    lru_unlink(c, e);
    free(e->msg);
    free(e);
    c->count--;
}

void dns_cache_clear(struct dns_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nbuckets; i++)
        while (c->buckets[i])
            drop(c, &c->buckets[i]);
}

void dns_cache_free(struct dns_cache *c)
{
    if (!c)
        return;
    dns_cache_clear(c);
    free(c->buckets);
    free(c);
}

size_t dns_cache_count(const struct dns_cache *c)
{
    return c ? c->count : 0;
}

int dns_cache_put(struct dns_cache *c, const char *name, uint16_t qtype, const uint8_t *msg,
                  size_t len, uint32_t ttl, int64_t now_ms)
{
    char key[DNS_NAME_MAX + 1];
    if (!c || c->max == 0 || ttl == 0)
        return 0;
    if (len > DNS_CACHE_MAX_ANSWER)
        return ERR_TOOBIG;
    key_name(name, key, sizeof(key));
    size_t klen = strlen(key);

    struct entry **slot = find_slot(c, key, qtype);
    if (*slot)
        drop(c, slot);
    if (c->count >= c->max) {
        struct entry *old = c->tail;
        drop(c, find_slot(c, old->name, old->qtype));
    }
    struct entry *e = calloc(1, sizeof(*e) + klen + 1);
    if (!e)
        return ERR_NOMEM;
    e->msg = malloc(len ? len : 1);
    if (!e->msg) {
        free(e);
        return ERR_NOMEM;
    }
    memcpy(e->msg, msg, len);
    e->len = len;
    e->qtype = qtype;
    e->expires_ms = now_ms + (int64_t)ttl * 1000;
    memcpy(e->name, key, klen + 1);
    slot = find_slot(c, key, qtype);
    e->hnext = *slot;
    *slot = e;
    lru_push_head(c, e);
    c->count++;
    return 0;
}

bool dns_cache_get(struct dns_cache *c, const char *name, uint16_t qtype, int64_t now_ms,
                   const uint8_t **msg, size_t *len, uint32_t *ttl_left)
{
    char key[DNS_NAME_MAX + 1];
    if (!c || c->count == 0)
        return false;
    key_name(name, key, sizeof(key));
    struct entry **slot = find_slot(c, key, qtype);
    struct entry *e = *slot;
    if (!e)
        return false;
    if (e->expires_ms <= now_ms) {
        drop(c, slot);
        return false;
    }
    lru_unlink(c, e);
    lru_push_head(c, e);
    *msg = e->msg;
    *len = e->len;
    /* Whole seconds left, rounded up so a live entry never says 0. */
    *ttl_left = (uint32_t)((e->expires_ms - now_ms + 999) / 1000);
    return true;
}
