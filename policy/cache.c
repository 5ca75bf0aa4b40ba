/*
 * cache.c - the persistent MTA-STS policy cache (RFC 8461 5.1: "senders
 * SHOULD cache policies") and the rules about when to fetch.
 *
 * Layout (version 1): one LMDB environment in a single file
 * (<queue_directory>/sts.lmdb, MDB_NOSUBDIR), two named databases:
 *   "meta":    "version" -> "1"
 *   "domains": lower-case A-label domain -> a JSON object
 *     {"v":1,"domain":..,"have_policy":bool,"id":..,"text":..,
 *      "mode":..,"mx":[..],"max_age":N,
 *      "fetched":N,"expires":N,"last_attempt":N,"attempt_id":..,
 *      "attempt_failed":bool,"last_failure":"sts-policy-fetch-error"|...,
 *      "last_error":..,"txt_checked":N}
 * The parsed fields are stored for readers of the record, and parsed again
 * from "text" on every read: the text is the source of truth, and a record
 * whose text does not parse, or whose fields disagree with it, is reported
 * as corrupt.
 *
 * Files: sts.lmdb mode 0640 and its lock file sts.lmdb-lock mode 0660, as
 * the queue's, so members of the daemon's group can read the cache.
 *
 * Invariants:
 *  - Writers commit one record per transaction; LMDB serialises writers
 *    across processes, so convoyctl may write while convoyd runs.
 *  - A failed fetch changes only the attempt fields (policy_entry_fail).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <lmdb.h>

#include "policy.h"

/* Address space, not disk: the file grows as records are written. */
#define MAP_SIZE (1024UL * 1024 * 1024)
#define RECORD_MAX (256 * 1024)

struct policy_cache {
    MDB_env *env;
    MDB_dbi meta, domains;
    bool readonly;
};

/* ---- entry rules -------------------------------------------------------- */

void policy_entry_clear(struct policy_entry *e)
{
    if (!e)
        return;
    policy_sts_clear(&e->policy);
    free(e->text);
    memset(e, 0, sizeof(*e));
}

bool policy_entry_valid(const struct policy_entry *e, int64_t now)
{
    return e && e->have_policy && now < e->expires;
}

bool policy_entry_should_fetch(const struct policy_entry *e, const char *txt_id, bool force,
                               int64_t now, int64_t retry_after)
{
    /* RFC 8461 3.3: after a failed fetch, wait before trying that id again. */
    if (e->attempt_failed && strcmp(e->attempt_id, txt_id) == 0 &&
        now - e->last_attempt < retry_after && now >= e->last_attempt)
        return false;
    if (force)
        return true;
    if (!e->have_policy || strcmp(e->id, txt_id) != 0)
        return true;
    return !policy_entry_valid(e, now);
}

void policy_entry_fail(struct policy_entry *e, const char *txt_id, int64_t now,
                       enum policy_failure f, const char *why)
{
    e->last_attempt = now;
    str_copy(e->attempt_id, txt_id ? txt_id : "", sizeof(e->attempt_id));
    e->attempt_failed = true;
    e->last_failure = f;
    str_copy(e->last_error, why ? why : "", sizeof(e->last_error));
}

int policy_entry_success(struct policy_entry *e, const char *txt_id, const char *text, size_t len,
                         const struct sts_policy *p, int64_t now)
{
    char *t = malloc(len + 1);
    if (!t)
        return ERR_NOMEM;
    memcpy(t, text, len);
    t[len] = '\0';
    struct sts_policy copy;
    if (policy_sts_copy(&copy, p) != 0) {
        free(t);
        return ERR_NOMEM;
    }
    policy_sts_clear(&e->policy);
    free(e->text);
    e->policy = copy;
    e->text = t;
    e->text_len = len;
    e->have_policy = true;
    str_copy(e->id, txt_id ? txt_id : "", sizeof(e->id));
    e->fetched = now;
    e->expires = now + (int64_t)p->max_age;
    e->last_attempt = now;
    str_copy(e->attempt_id, e->id, sizeof(e->attempt_id));
    e->attempt_failed = false;
    e->last_failure = POLICY_FAIL_NONE;
    e->last_error[0] = '\0';
    e->txt_checked = now;
    return 0;
}

/* ---- encoding ------------------------------------------------------------ */

static enum policy_failure failure_from(const char *s)
{
    if (!s)
        return POLICY_FAIL_NONE;
    for (int f = POLICY_FAIL_FETCH; f <= POLICY_FAIL_WEBPKI; f++)
        if (strcmp(s, policy_failure_result_type((enum policy_failure)f)) == 0)
            return (enum policy_failure)f;
    return POLICY_FAIL_NONE;
}

static char *encode(const struct policy_entry *e)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "v", json_integer(POLICY_CACHE_VERSION));
    json_object_set_new(o, "domain", json_string(e->domain));
    json_object_set_new(o, "have_policy", json_boolean(e->have_policy));
    json_object_set_new(o, "id", json_string(e->id));
    json_object_set_new(o, "text", e->text ? json_stringn(e->text, e->text_len) : json_null());
    if (e->have_policy) {
        json_object_set_new(o, "mode", json_string(policy_mode_name(e->policy.mode)));
        json_t *mx = json_array();
        for (size_t i = 0; i < e->policy.n_mx; i++)
            json_array_append_new(mx, json_string(e->policy.mx[i]));
        json_object_set_new(o, "mx", mx);
        json_object_set_new(o, "max_age", json_integer(e->policy.max_age));
    }
    json_object_set_new(o, "fetched", json_integer(e->fetched));
    json_object_set_new(o, "expires", json_integer(e->expires));
    json_object_set_new(o, "last_attempt", json_integer(e->last_attempt));
    json_object_set_new(o, "attempt_id", json_string(e->attempt_id));
    json_object_set_new(o, "attempt_failed", json_boolean(e->attempt_failed));
    const char *rt = policy_failure_result_type(e->last_failure);
    json_object_set_new(o, "last_failure", rt ? json_string(rt) : json_null());
    json_object_set_new(o, "last_error", json_string(e->last_error));
    json_object_set_new(o, "txt_checked", json_integer(e->txt_checked));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void copy_str(json_t *o, const char *key, char *dst, size_t size)
{
    const char *s = json_string_value(json_object_get(o, key));
    str_copy(dst, s ? s : "", size);
}

static int64_t get_int(json_t *o, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(o, key));
}

/* The stored parsed fields must agree with the text they came from. */
static bool fields_match(json_t *o, const struct sts_policy *p)
{
    const char *mode = json_string_value(json_object_get(o, "mode"));
    json_t *mx = json_object_get(o, "mx");
    if (!mode || strcmp(mode, policy_mode_name(p->mode)) != 0 || !json_is_array(mx) ||
        json_array_size(mx) != p->n_mx || get_int(o, "max_age") != (int64_t)p->max_age)
        return false;
    for (size_t i = 0; i < p->n_mx; i++) {
        const char *m = json_string_value(json_array_get(mx, i));
        if (!m || strcmp(m, p->mx[i]) != 0)
            return false;
    }
    return true;
}

static int decode(const void *data, size_t len, struct policy_entry *e)
{
    memset(e, 0, sizeof(*e));
    json_error_t jerr;
    json_t *o = json_loadb(data, len, 0, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return ERR_CORRUPT;
    }
    if (get_int(o, "v") != POLICY_CACHE_VERSION) {
        json_decref(o);
        return ERR_VERSION;
    }
    copy_str(o, "domain", e->domain, sizeof(e->domain));
    e->have_policy = json_is_true(json_object_get(o, "have_policy"));
    copy_str(o, "id", e->id, sizeof(e->id));
    e->fetched = get_int(o, "fetched");
    e->expires = get_int(o, "expires");
    e->last_attempt = get_int(o, "last_attempt");
    copy_str(o, "attempt_id", e->attempt_id, sizeof(e->attempt_id));
    e->attempt_failed = json_is_true(json_object_get(o, "attempt_failed"));
    e->last_failure = failure_from(json_string_value(json_object_get(o, "last_failure")));
    copy_str(o, "last_error", e->last_error, sizeof(e->last_error));
    e->txt_checked = get_int(o, "txt_checked");
    json_t *t = json_object_get(o, "text");
    int rc = 0;
    if (json_is_string(t)) {
        size_t n = json_string_length(t);
        e->text = malloc(n + 1);
        if (!e->text) {
            rc = ERR_NOMEM;
        } else {
            memcpy(e->text, json_string_value(t), n);
            e->text[n] = '\0';
            e->text_len = n;
        }
    }
    if (rc == 0 && e->have_policy) {
        if (!e->text || policy_parse(e->text, e->text_len, &e->policy, NULL, 0) != 0 ||
            !fields_match(o, &e->policy))
            rc = ERR_CORRUPT;
    }
    json_decref(o);
    if (rc != 0)
        policy_entry_clear(e);
    return rc;
}

/* ---- LMDB ---------------------------------------------------------------- */

static int map_err(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return ERR_NOTFOUND;
    case MDB_MAP_FULL:
        return ERR_FULL;
    case ENOMEM:
        return ERR_NOMEM;
    case EACCES:
        return ERR_PERM;
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
        return ERR_VERSION;
    default:
        return ERR_IO;
    }
}

int policy_cache_open(const char *path, bool readonly, struct policy_cache **out, char *why,
                      size_t why_size)
{
    *out = NULL;
    struct policy_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return ERR_NOMEM;
    c->readonly = readonly;
    int rc = mdb_env_create(&c->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(c->env, 4);
    if (rc == 0)
        rc = mdb_env_set_mapsize(c->env, MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open(c->env, path, MDB_NOSUBDIR | (readonly ? MDB_RDONLY : 0), 0640);
    if (rc != 0) {
        snprintf(why, why_size, "%s: %s", path, mdb_strerror(rc));
        if (c->env)
            mdb_env_close(c->env);
        free(c);
        return map_err(rc);
    }
    MDB_txn *txn = NULL;
    rc = mdb_txn_begin(c->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
    unsigned fl = readonly ? 0 : MDB_CREATE;
    if (rc == 0)
        rc = mdb_dbi_open(txn, "meta", fl, &c->meta);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "domains", fl, &c->domains);
    int err = map_err(rc);
    if (rc == 0) {
        MDB_val k = {7, "version"}, v;
        int g = mdb_get(txn, c->meta, &k, &v);
        char want[16];
        snprintf(want, sizeof(want), "%d", POLICY_CACHE_VERSION);
        if (g == MDB_NOTFOUND && !readonly) {
            v.mv_size = strlen(want);
            v.mv_data = want;
            rc = mdb_put(txn, c->meta, &k, &v, 0);
            err = map_err(rc);
        } else if (g != 0) {
            err = map_err(g);
            rc = g;
        } else if (v.mv_size != strlen(want) || memcmp(v.mv_data, want, v.mv_size) != 0) {
            snprintf(why, why_size, "%s: cache layout version %.*s, expected %s", path,
                     (int)(v.mv_size > 8 ? 8 : v.mv_size), (const char *)v.mv_data, want);
            mdb_txn_abort(txn);
            mdb_env_close(c->env);
            free(c);
            return ERR_VERSION;
        }
    }
    if (rc == 0) {
        rc = mdb_txn_commit(txn);
        err = map_err(rc);
    } else if (txn) {
        mdb_txn_abort(txn);
    }
    if (rc != 0) {
        snprintf(why, why_size, "%s: %s", path, mdb_strerror(rc));
        mdb_env_close(c->env);
        free(c);
        return err;
    }
    if (!readonly) {
        /* As the queue's files: the daemon's group reads the cache
         * (convoyctl sts show, list) and, to do so, registers in LMDB's
         * reader table, which needs write access to the lock file. Set on
         * every open, so caches made 0600 by older versions open up too; a
         * file of another owner keeps its mode. */
        char lpath[4200];
        chmod(path, 0640);
        if (snprintf(lpath, sizeof(lpath), "%s-lock", path) < (int)sizeof(lpath))
            chmod(lpath, 0660);
    }
    *out = c;
    return 0;
}

void policy_cache_close(struct policy_cache *c)
{
    if (!c)
        return;
    mdb_env_close(c->env);
    free(c);
}

int policy_cache_get(struct policy_cache *c, const char *domain, struct policy_entry *e)
{
    memset(e, 0, sizeof(*e));
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_err(rc);
    MDB_val k = {strlen(domain), (void *)domain}, v;
    rc = mdb_get(txn, c->domains, &k, &v);
    int err = map_err(rc);
    if (rc == 0)
        err = decode(v.mv_data, v.mv_size, e);
    mdb_txn_abort(txn);
    if (err == 0)
        str_copy(e->domain, domain, sizeof(e->domain));
    return err;
}

int policy_cache_put(struct policy_cache *c, const struct policy_entry *e)
{
    if (c->readonly)
        return ERR_PERM;
    char *s = encode(e);
    if (!s)
        return ERR_NOMEM;
    size_t n = strlen(s);
    if (n > RECORD_MAX) {
        free(s);
        return ERR_TOOBIG;
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc != 0) {
        free(s);
        return map_err(rc);
    }
    MDB_val k = {strlen(e->domain), (void *)e->domain}, v = {n, s};
    rc = mdb_put(txn, c->domains, &k, &v, 0);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    free(s);
    return map_err(rc);
}

int policy_cache_del(struct policy_cache *c, const char *domain)
{
    if (c->readonly)
        return ERR_PERM;
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, 0, &txn);
    if (rc != 0)
        return map_err(rc);
    MDB_val k = {strlen(domain), (void *)domain};
    rc = mdb_del(txn, c->domains, &k, NULL);
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else
        mdb_txn_abort(txn);
    return map_err(rc);
}

int policy_cache_each(struct policy_cache *c, policy_cache_cb cb, void *arg)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return map_err(rc);
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, c->domains, &cur);
    if (rc != 0) {
        mdb_txn_abort(txn);
        return map_err(rc);
    }
    MDB_val k, v;
    int ret = 0;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        struct policy_entry e;
        if (decode(v.mv_data, v.mv_size, &e) != 0 || k.mv_size >= sizeof(e.domain))
            continue; /* a record we cannot read is skipped, not fatal */
        memcpy(e.domain, k.mv_data, k.mv_size);
        e.domain[k.mv_size] = '\0';
        ret = cb(arg, &e);
        policy_entry_clear(&e);
        if (ret != 0)
            break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return ret;
}
