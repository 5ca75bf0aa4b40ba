/*
 * tlsrpt_store.c - the TLS-RPT counters (RFC 8460 4) in LMDB, and the
 * JSON report built from them.
 *
 * Layout (version 1): one LMDB environment in one file
 * (<queue_directory>/tlsrpt.lmdb, MDB_NOSUBDIR), named databases:
 *   "meta":    "version" -> "1"
 *   "records": "YYYY-MM-DD/domain" -> JSON
 *       {"v":1,"seq":N,"dropped":N,"policies":[{"type":"sts",
 *        "strings":[..],"mx":[..],"ok":N,"fail":N,"dropped":N,
 *        "details":[{"rt":..,"smi":..,"mx":..,"helo":..,"rip":..,
 *                    "code":..,"n":N}]}]}
 *   "days":    "YYYY-MM-DD" -> {"domains":N,"dropped":N}
 *   "seen":    "YYYY-MM-DD/session-id" -> "" (idempotence keys)
 * Keys sort by day first, so a day is one cursor range: listing and
 * pruning walk it in order.
 *
 * Invariants:
 *  - One session is one write transaction: its counters, its detail row,
 *    the day's domain count and its idempotence key are committed together
 *    or not at all, so a session is never counted twice, nor half.
 *  - A policy's failure count is the sum of its detail rows plus what the
 *    bound on rows dropped ("dropped").
 *  - The environment is opened with MDB_NOSYNC: commits are cheap writes
 *    into the kernel's page cache (the delivery loop never waits for a
 *    disk); tlsrpt_store_sync() makes them durable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>
#include <lmdb.h>

#include "policy.h"

#define MAP_SIZE (1024UL * 1024 * 1024)
#define RECORD_MAX (1024 * 1024)
#define KEY_MAX 400
#define FIELD_MAX 256 /* each string of a detail row is cut to this */

struct tlsrpt_store {
    MDB_env *env;
    MDB_dbi meta, records, days, seen;
    bool readonly;
    tlsrpt_change_cb on_change;
    void *change_arg;
};

static int map_err(int rc)
{
    switch (rc) {
    case 0:
        return 0;
    case MDB_NOTFOUND:
        return ERR_NOTFOUND;
    case MDB_KEYEXIST:
        return ERR_EXISTS;
    case MDB_MAP_FULL:
        return ERR_FULL;
    case ENOMEM:
        return ERR_NOMEM;
    case EACCES:
        return ERR_PERM;
    case MDB_VERSION_MISMATCH:
    case MDB_INVALID:
        return ERR_VERSION;
    case MDB_CORRUPTED:
        return ERR_CORRUPT;
    default:
        return ERR_IO;
    }
}

/* ---- days ------------------------------------------------------------------ */

void tlsrpt_day_of(int64_t t, char out[TLSRPT_DAY_SIZE])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, TLSRPT_DAY_SIZE, "%Y-%m-%d", &tm);
}

int tlsrpt_day_parse(const char *day, int64_t *start)
{
    if (!day || strlen(day) != 10 || day[4] != '-' || day[7] != '-')
        return ERR_INVAL;
    for (int i = 0; i < 10; i++)
        if (i != 4 && i != 7 && (day[i] < '0' || day[i] > '9'))
            return ERR_INVAL;
    int y = (day[0] - '0') * 1000 + (day[1] - '0') * 100 + (day[2] - '0') * 10 + (day[3] - '0');
    int m = (day[5] - '0') * 10 + (day[6] - '0');
    int d = (day[8] - '0') * 10 + (day[9] - '0');
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || m < 1 || m > 12 || d < 1 || d > mdays[m - 1])
        return ERR_INVAL;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (m == 2 && d == 29 && !leap)
        return ERR_INVAL;
    /* Days since the epoch (civil calendar, proleptic Gregorian). */
    int yy = m <= 2 ? y - 1 : y;
    int era = yy / 400;
    int yoe = yy - era * 400;
    int doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = (int64_t)era * 146097 + doe - 719468;
    *start = days * 86400;
    return 0;
}

/* ---- open, close ------------------------------------------------------------ */

int tlsrpt_store_open(const char *path, bool readonly, struct tlsrpt_store **out, char *why,
                      size_t why_size)
{
    *out = NULL;
    struct tlsrpt_store *s = calloc(1, sizeof(*s));
    if (!s)
        return ERR_NOMEM;
    s->readonly = readonly;
    int rc = mdb_env_create(&s->env);
    if (rc == 0)
        rc = mdb_env_set_maxdbs(s->env, 8);
    if (rc == 0)
        rc = mdb_env_set_mapsize(s->env, MAP_SIZE);
    if (rc == 0)
        rc = mdb_env_open(s->env, path, MDB_NOSUBDIR | MDB_NOSYNC | (readonly ? MDB_RDONLY : 0),
                          0640);
    if (rc != 0) {
        snprintf(why, why_size, "%s: %s", path, mdb_strerror(rc));
        if (s->env)
            mdb_env_close(s->env);
        free(s);
        return map_err(rc);
    }
    MDB_txn *txn = NULL;
    rc = mdb_txn_begin(s->env, NULL, readonly ? MDB_RDONLY : 0, &txn);
    unsigned fl = readonly ? 0 : MDB_CREATE;
    if (rc == 0)
        rc = mdb_dbi_open(txn, "meta", fl, &s->meta);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "records", fl, &s->records);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "days", fl, &s->days);
    if (rc == 0)
        rc = mdb_dbi_open(txn, "seen", fl, &s->seen);
    int err = map_err(rc);
    if (rc == 0) {
        char want[16];
        snprintf(want, sizeof(want), "%d", TLSRPT_STORE_VERSION);
        MDB_val k = {7, "version"}, v;
        int g = mdb_get(txn, s->meta, &k, &v);
        if (g == MDB_NOTFOUND && !readonly) {
            v.mv_size = strlen(want);
            v.mv_data = want;
            rc = mdb_put(txn, s->meta, &k, &v, 0);
            err = map_err(rc);
        } else if (g != 0) {
            rc = g;
            err = map_err(g);
        } else if (v.mv_size != strlen(want) || memcmp(v.mv_data, want, v.mv_size) != 0) {
            snprintf(why, why_size, "%s: store layout version %.*s, expected %s", path,
                     (int)(v.mv_size > 8 ? 8 : v.mv_size), (const char *)v.mv_data, want);
            mdb_txn_abort(txn);
            mdb_env_close(s->env);
            free(s);
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
        mdb_env_close(s->env);
        free(s);
        return err;
    }
    if (!readonly) {
        /* As the policy cache: the daemon's group may read the store
         * (convoyctl tlsrpt show), which needs the lock file writable. */
        char lpath[4200];
        chmod(path, 0640);
        if (snprintf(lpath, sizeof(lpath), "%s-lock", path) < (int)sizeof(lpath))
            chmod(lpath, 0660);
    }
    *out = s;
    return 0;
}

int tlsrpt_store_sync(struct tlsrpt_store *s)
{
    if (!s || s->readonly)
        return 0;
    return map_err(mdb_env_sync(s->env, 1));
}

void tlsrpt_store_close(struct tlsrpt_store *s)
{
    if (!s)
        return;
    tlsrpt_store_sync(s);
    mdb_env_close(s->env);
    free(s);
}

/* ---- records ------------------------------------------------------------------ */

static size_t make_key(char *out, const char *day, const char *rest)
{
    int n = snprintf(out, KEY_MAX, "%s/%s", day, rest);
    return n < 0 || n >= KEY_MAX ? 0 : (size_t)n;
}

static json_t *load_json(const MDB_val *v)
{
    json_error_t e;
    json_t *o = json_loadb(v->mv_data, v->mv_size, 0, &e);
    if (o && (!json_is_object(o) || json_integer_value(json_object_get(o, "v")) != 1)) {
        json_decref(o);
        o = NULL;
    }
    return o;
}

static int put_json(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, json_t *o)
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text)
        return ERR_NOMEM;
    size_t n = strlen(text);
    int rc = n > RECORD_MAX ? ERR_TOOBIG : 0;
    if (rc == 0) {
        MDB_val v = {n, text};
        rc = map_err(mdb_put(txn, dbi, k, &v, 0));
    }
    free(text);
    return rc;
}

static uint64_t get_u64(json_t *o, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(o, key));
    return v > 0 ? (uint64_t)v : 0;
}

static void add_u64(json_t *o, const char *key, uint64_t by)
{
    json_object_set_new(o, key, json_integer((json_int_t)(get_u64(o, key) + by)));
}

static json_t *str_array(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && v && i < n; i++)
        json_array_append_new(a, json_string(v[i] ? v[i] : ""));
    return a;
}

/* RFC 8460 4.4 policy-string for an MTA-STS policy: the policy's fields,
 * one string per line, in the order of RFC 8461 3.2's example. */
static json_t *sts_strings(const struct sts_policy *p)
{
    json_t *a = json_array();
    char line[POLICY_NAME_MAX + 16];
    json_array_append_new(a, json_string("version: STSv1"));
    snprintf(line, sizeof(line), "mode: %s", policy_mode_name(p->mode));
    json_array_append_new(a, json_string(line));
    for (size_t i = 0; i < p->n_mx; i++) {
        snprintf(line, sizeof(line), "mx: %s", p->mx[i]);
        json_array_append_new(a, json_string(line));
    }
    snprintf(line, sizeof(line), "max_age: %u", p->max_age);
    json_array_append_new(a, json_string(line));
    return a;
}

/* A detail string, cut to FIELD_MAX and stripped of control characters (a
 * failure-reason-code may come from a peer). "" when absent. */
static json_t *detail_str(const char *s)
{
    char out[FIELD_MAX];
    size_t o = 0;
    for (size_t i = 0; s && s[i] && o + 1 < sizeof(out); i++)
        out[o++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? ' ' : s[i];
    out[o] = '\0';
    /* A cut in the middle of a UTF-8 sequence would make jansson refuse
     * the string: drop an incomplete tail. */
    json_t *j = json_string(out);
    while (!j && o > 0) {
        out[--o] = '\0';
        j = json_string(out);
    }
    return j ? j : json_string("");
}

static bool same_detail(json_t *d, json_t *want)
{
    static const char *const keys[] = {"rt", "smi", "mx", "rip", "code"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!json_equal(json_object_get(d, keys[i]), json_object_get(want, keys[i])))
            return false;
    return true;
}

/* Count the session into the record object o (created when new). */
/* The policy entry of policies with this type, policy strings and MX
 * patterns, or NULL. */
static json_t *find_policy(json_t *policies, const char *type, json_t *strings, json_t *mx)
{
    size_t i;
    json_t *p;
    json_array_foreach(policies, i, p)
    {
        const char *t = json_string_value(json_object_get(p, "type"));
        if (t && type && strcmp(t, type) == 0 &&
            json_equal(json_object_get(p, "strings"), strings) &&
            json_equal(json_object_get(p, "mx"), mx))
            return p;
    }
    return NULL;
}

/* The failure-details row of details that same_detail() finds equal to want,
 * or NULL. */
static json_t *find_detail(json_t *details, json_t *want)
{
    size_t i;
    json_t *d;
    json_array_foreach(details, i, d)
    {
        if (same_detail(d, want))
            return d;
    }
    return NULL;
}

static int count_into(json_t *o, const struct tlsrpt_session_result *r)
{
    json_t *strings, *mx;
    if (r->policy_strings || r->n_policy_strings)
        strings = str_array(r->policy_strings, r->n_policy_strings);
    else if (r->policy_type == TLSRPT_POLICY_STS && r->sts)
        strings = sts_strings(r->sts);
    else
        strings = json_array();
    if (r->mx_hosts || r->n_mx_hosts)
        mx = str_array(r->mx_hosts, r->n_mx_hosts);
    else if (r->policy_type == TLSRPT_POLICY_STS && r->sts)
        mx = str_array((const char *const *)r->sts->mx, r->sts->n_mx);
    else
        mx = json_array();
    const char *type = tlsrpt_policy_type_name(r->policy_type);

    json_t *policies = json_object_get(o, "policies");
    json_t *pol = find_policy(policies, type, strings, mx);
    if (!pol) {
        if (json_array_size(policies) >= TLSRPT_MAX_POLICIES) {
            json_decref(strings);
            json_decref(mx);
            add_u64(o, "dropped", 1);
            return 0;
        }
        pol = json_object();
        json_object_set_new(pol, "type", json_string(type));
        json_object_set_new(pol, "strings", strings);
        json_object_set_new(pol, "mx", mx);
        json_object_set_new(pol, "ok", json_integer(0));
        json_object_set_new(pol, "fail", json_integer(0));
        json_object_set_new(pol, "dropped", json_integer(0));
        json_object_set_new(pol, "details", json_array());
        json_array_append_new(policies, pol);
    } else {
        json_decref(strings);
        json_decref(mx);
    }
    if (r->result == TLSRPT_SUCCESS) {
        add_u64(pol, "ok", 1);
        return 0;
    }
    add_u64(pol, "fail", 1);
    json_t *want = json_object();
    json_object_set_new(want, "rt", json_string(tlsrpt_result_name(r->result)));
    json_object_set_new(want, "smi", detail_str(r->sending_mta_ip));
    /* The MX host as a name, not as spelled: "MX1.Example.com." and
     * "mx1.example.com" are one row. */
    char mxn[POLICY_NAME_MAX];
    if (r->receiving_mx_hostname && policy_domain_normalize(r->receiving_mx_hostname, mxn) == 0)
        json_object_set_new(want, "mx", json_string(mxn));
    else
        json_object_set_new(want, "mx", detail_str(r->receiving_mx_hostname));
    json_object_set_new(want, "rip", detail_str(r->receiving_ip));
    json_object_set_new(want, "code", detail_str(r->failure_reason_code));
    json_t *details = json_object_get(pol, "details");
    json_t *d = find_detail(details, want);
    if (d) {
        add_u64(d, "n", 1);
        json_decref(want);
        return 0;
    }
    if (json_array_size(details) >= TLSRPT_MAX_DETAILS) {
        add_u64(pol, "dropped", 1);
        json_decref(want);
        return 0;
    }
    json_object_set_new(want, "helo", detail_str(r->receiving_mx_helo));
    json_object_set_new(want, "n", json_integer(1));
    json_array_append_new(details, want);
    return 0;
}

/* ---- summing records (a fleet's nodes) --------------------------------------------- */

/* Add one policy entry p of a record into the sum's policy q. */
static void sum_policy(json_t *q, json_t *p)
{
    add_u64(q, "ok", get_u64(p, "ok"));
    add_u64(q, "fail", get_u64(p, "fail"));
    add_u64(q, "dropped", get_u64(p, "dropped"));
    json_t *details = json_object_get(q, "details");
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(p, "details"), i, d)
    {
        json_t *found = find_detail(details, d);
        if (found)
            add_u64(found, "n", get_u64(d, "n"));
        else if (json_array_size(details) >= TLSRPT_MAX_DETAILS)
            add_u64(q, "dropped", get_u64(d, "n"));
        else
            json_array_append_new(details, json_deep_copy(d));
    }
}

/* Add the record o into the sum: policies match by type, strings and mx;
 * the bounds of the store hold for the sum too. */
static void sum_record(json_t *sum, json_t *o)
{
    add_u64(sum, "dropped", get_u64(o, "dropped"));
    json_t *policies = json_object_get(sum, "policies");
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(o, "policies"), i, p)
    {
        json_t *found = find_policy(policies, json_string_value(json_object_get(p, "type")),
                                    json_object_get(p, "strings"), json_object_get(p, "mx"));
        if (!found && json_array_size(policies) >= TLSRPT_MAX_POLICIES) {
            add_u64(sum, "dropped", get_u64(p, "ok") + get_u64(p, "fail"));
            continue;
        }
        if (!found) {
            found = json_pack("{s:O, s:O, s:O, s:i, s:i, s:i, s:[]}", "type",
                              json_object_get(p, "type"), "strings", json_object_get(p, "strings"),
                              "mx", json_object_get(p, "mx"), "ok", 0, "fail", 0, "dropped", 0,
                              "details");
            if (!found)
                continue;
            json_array_append_new(policies, found);
        }
        sum_policy(found, p);
    }
}

int tlsrpt_record_sum(const char *const *recs, const size_t *lens, size_t n, struct buf *out)
{
    json_t *sum = json_pack("{s:i, s:i, s:i, s:[]}", "v", 1, "seq", 0, "dropped", 0, "policies");
    if (!sum)
        return ERR_NOMEM;
    size_t used = 0;
    for (size_t i = 0; i < n; i++) {
        MDB_val v = {lens[i], (void *)recs[i]};
        json_t *o = load_json(&v);
        if (!o || !json_is_array(json_object_get(o, "policies"))) {
            json_decref(o);
            continue; /* a record this version cannot read counts nothing */
        }
        sum_record(sum, o);
        json_decref(o);
        used++;
    }
    int rc = used ? 0 : ERR_NOTFOUND;
    if (rc == 0) {
        char *text = json_dumps(sum, JSON_COMPACT | JSON_PRESERVE_ORDER);
        rc = text ? buf_append_str(out, text) : ERR_NOMEM;
        free(text);
    }
    json_decref(sum);
    return rc;
}

int tlsrpt_record_session(struct tlsrpt_store *s, const struct tlsrpt_session_result *r)
{
    if (s->readonly)
        return ERR_PERM;
    char domain[POLICY_NAME_MAX];
    if (!r->policy_domain || policy_domain_normalize(r->policy_domain, domain) != 0)
        return ERR_INVAL;
    if (r->result != TLSRPT_SUCCESS && !tlsrpt_result_name(r->result))
        return ERR_INVAL;
    if (r->session_id && (!*r->session_id || strlen(r->session_id) > TLSRPT_SESSION_ID_MAX))
        return ERR_INVAL;
    char day[TLSRPT_DAY_SIZE];
    tlsrpt_day_of(r->time, day);
    char kbuf[KEY_MAX], dkey_buf[KEY_MAX];
    size_t klen = make_key(kbuf, day, domain);
    if (klen == 0)
        return ERR_INVAL;

    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, 0, &txn));
    if (rc != 0)
        return rc;
    if (r->session_id) {
        size_t sl = make_key(dkey_buf, day, r->session_id);
        MDB_val k = {sl, dkey_buf}, v = {0, ""};
        rc = map_err(mdb_put(txn, s->seen, &k, &v, MDB_NOOVERWRITE));
        if (rc != 0) {
            mdb_txn_abort(txn);
            return rc; /* ERR_EXISTS: counted before */
        }
    }
    /* The day's counters: how many domains, how many sessions dropped. */
    MDB_val dk = {strlen(day), day}, dv;
    json_t *dayo = NULL;
    int g = mdb_get(txn, s->days, &dk, &dv);
    if (g == 0)
        dayo = load_json(&dv);
    if (!dayo) {
        dayo = json_object();
        json_object_set_new(dayo, "v", json_integer(1));
    }
    MDB_val k = {klen, kbuf}, v;
    json_t *o = NULL;
    g = mdb_get(txn, s->records, &k, &v);
    if (g == 0) {
        o = load_json(&v);
        if (!o)
            g = MDB_NOTFOUND; /* unreadable: start over rather than stop counting */
    }
    if (g == MDB_NOTFOUND) {
        if (get_u64(dayo, "domains") >= TLSRPT_MAX_DOMAINS) {
            add_u64(dayo, "dropped", 1);
            rc = put_json(txn, s->days, &dk, dayo);
            json_decref(dayo);
            if (rc == 0)
                rc = map_err(mdb_txn_commit(txn));
            else
                mdb_txn_abort(txn);
            return rc == 0 ? ERR_TOOBIG : rc;
        }
        add_u64(dayo, "domains", 1);
        rc = put_json(txn, s->days, &dk, dayo);
        o = json_object();
        json_object_set_new(o, "v", json_integer(1));
        json_object_set_new(o, "seq", json_integer(0));
        json_object_set_new(o, "dropped", json_integer(0));
        json_object_set_new(o, "policies", json_array());
    } else if (g != 0) {
        rc = map_err(g);
    }
    json_decref(dayo);
    if (rc == 0)
        rc = count_into(o, r);
    if (rc == 0)
        rc = put_json(txn, s->records, &k, o);
    json_decref(o);
    if (rc == 0)
        rc = map_err(mdb_txn_commit(txn));
    else
        mdb_txn_abort(txn);
    if (rc == 0 && s->on_change)
        s->on_change(s->change_arg, day, domain);
    return rc;
}

void tlsrpt_store_on_change(struct tlsrpt_store *s, tlsrpt_change_cb cb, void *arg)
{
    s->on_change = cb;
    s->change_arg = arg;
}

/* ---- reading ------------------------------------------------------------------- */

static void summarize(json_t *o, const char *key, size_t klen, struct tlsrpt_summary *sum)
{
    memset(sum, 0, sizeof(*sum));
    memcpy(sum->day, key, TLSRPT_DAY_SIZE - 1);
    size_t dl = klen - TLSRPT_DAY_SIZE;
    if (dl >= sizeof(sum->domain))
        dl = sizeof(sum->domain) - 1;
    memcpy(sum->domain, key + TLSRPT_DAY_SIZE, dl);
    sum->domain[dl] = '\0';
    sum->dropped = get_u64(o, "dropped");
    sum->reports = (uint32_t)get_u64(o, "seq");
    sum->fleet = json_is_true(json_object_get(o, "fleet"));
    json_t *policies = json_object_get(o, "policies");
    sum->n_policies = json_array_size(policies);
    size_t i;
    json_t *p;
    json_array_foreach(policies, i, p)
    {
        sum->successful += get_u64(p, "ok");
        sum->failed += get_u64(p, "fail");
        sum->dropped += get_u64(p, "dropped");
    }
}

int tlsrpt_store_each(struct tlsrpt_store *s, const char *day, tlsrpt_summary_cb cb, void *arg)
{
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    if (rc != 0)
        return rc;
    MDB_cursor *cur;
    rc = map_err(mdb_cursor_open(txn, s->records, &cur));
    if (rc != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    char prefix[TLSRPT_DAY_SIZE + 1] = "";
    if (day)
        snprintf(prefix, sizeof(prefix), "%s/", day);
    size_t plen = strlen(prefix);
    MDB_val k = {plen, prefix}, v;
    int g =
        plen ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    int ret = 0;
    for (; g == 0; g = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (plen && (k.mv_size < plen || memcmp(k.mv_data, prefix, plen) != 0))
            break;
        if (k.mv_size <= TLSRPT_DAY_SIZE || ((const char *)k.mv_data)[TLSRPT_DAY_SIZE - 1] != '/')
            continue;
        json_t *o = load_json(&v);
        if (!o)
            continue; /* unreadable records are skipped, not fatal */
        struct tlsrpt_summary sum;
        summarize(o, k.mv_data, k.mv_size, &sum);
        json_decref(o);
        ret = cb(arg, &sum);
        if (ret != 0)
            break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    return ret;
}

uint64_t tlsrpt_store_dropped(struct tlsrpt_store *s, const char *day)
{
    MDB_txn *txn;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    MDB_val k = {strlen(day), (void *)day}, v;
    uint64_t n = 0;
    if (mdb_get(txn, s->days, &k, &v) == 0) {
        json_t *o = load_json(&v);
        n = get_u64(o, "dropped");
        json_decref(o);
    }
    mdb_txn_abort(txn);
    return n;
}

static int get_record(struct tlsrpt_store *s, const char *day, const char *domain, json_t **out)
{
    *out = NULL;
    char kbuf[KEY_MAX];
    size_t klen = make_key(kbuf, day, domain);
    if (klen == 0)
        return ERR_INVAL;
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
    if (rc != 0)
        return rc;
    MDB_val k = {klen, kbuf}, v;
    rc = map_err(mdb_get(txn, s->records, &k, &v));
    if (rc == 0) {
        *out = load_json(&v);
        if (!*out)
            rc = ERR_CORRUPT;
    }
    mdb_txn_abort(txn);
    return rc;
}

int tlsrpt_store_record(struct tlsrpt_store *s, const char *day, const char *domain,
                        struct buf *out)
{
    json_t *o;
    int rc = get_record(s, day, domain, &o);
    if (rc != 0)
        return rc;
    if (json_is_true(json_object_get(o, "fleet"))) {
        json_decref(o);
        return ERR_EXISTS; /* the fleet's sum, not this node's counts */
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return ERR_NOMEM;
    rc = buf_append_str(out, text);
    free(text);
    return rc;
}

int tlsrpt_store_put_fleet(struct tlsrpt_store *s, const char *day, const char *domain,
                           const char *sum, size_t len, uint32_t seq)
{
    if (s->readonly)
        return ERR_PERM;
    char kbuf[KEY_MAX];
    size_t klen = make_key(kbuf, day, domain);
    if (klen == 0)
        return ERR_INVAL;
    MDB_val sv = {len, (void *)sum};
    json_t *o = load_json(&sv);
    if (!o)
        return ERR_INVAL;
    json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    json_object_set_new(o, "fleet", json_true());
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, 0, &txn));
    if (rc == 0) {
        MDB_val k = {klen, kbuf};
        rc = put_json(txn, s->records, &k, o);
        if (rc == 0)
            rc = map_err(mdb_txn_commit(txn));
        else
            mdb_txn_abort(txn);
    }
    json_decref(o);
    return rc;
}

/* Read the stored record of (day, domain), let edit change it, and store
 * it, in one write transaction. ERR_NOTFOUND when there is none. */
static int edit_record(struct tlsrpt_store *s, const char *day, const char *domain,
                       void (*edit)(json_t *o, void *arg), void *arg)
{
    if (s->readonly)
        return ERR_PERM;
    char kbuf[KEY_MAX];
    size_t klen = make_key(kbuf, day, domain);
    if (klen == 0)
        return ERR_INVAL;
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, 0, &txn));
    if (rc != 0)
        return rc;
    MDB_val k = {klen, kbuf}, v;
    rc = map_err(mdb_get(txn, s->records, &k, &v));
    json_t *o = NULL;
    if (rc == 0) {
        o = load_json(&v);
        rc = o ? 0 : ERR_CORRUPT;
    }
    if (rc == 0) {
        edit(o, arg);
        rc = put_json(txn, s->records, &k, o);
    }
    json_decref(o);
    if (rc == 0)
        rc = map_err(mdb_txn_commit(txn));
    else
        mdb_txn_abort(txn);
    return rc;
}

static void zero_edit(json_t *o, void *arg)
{
    (void)arg;
    add_u64(o, "seq", 1);
    json_object_set_new(o, "dropped", json_integer(0));
    json_object_set_new(o, "policies", json_array());
    json_object_del(o, "fleet");
}

int tlsrpt_store_zero(struct tlsrpt_store *s, const char *day, const char *domain)
{
    int rc = edit_record(s, day, domain, zero_edit, NULL);
    if (rc == 0 && s->on_change)
        s->on_change(s->change_arg, day, domain);
    return rc;
}

static void next_seq_edit(json_t *o, void *arg)
{
    *(uint32_t *)arg = (uint32_t)get_u64(o, "seq");
    add_u64(o, "seq", 1);
}

int tlsrpt_store_next_seq(struct tlsrpt_store *s, const char *day, const char *domain,
                          uint32_t *seq)
{
    return edit_record(s, day, domain, next_seq_edit, seq);
}

int tlsrpt_store_delete(struct tlsrpt_store *s, const char *day, const char *domain)
{
    if (s->readonly)
        return ERR_PERM;
    char kbuf[KEY_MAX];
    size_t klen = make_key(kbuf, day, domain);
    if (klen == 0)
        return ERR_INVAL;
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, 0, &txn));
    if (rc != 0)
        return rc;
    MDB_val k = {klen, kbuf};
    rc = map_err(mdb_del(txn, s->records, &k, NULL));
    if (rc == 0)
        rc = map_err(mdb_txn_commit(txn));
    else
        mdb_txn_abort(txn);
    return rc;
}

/* Delete every key of dbi that sorts before before_day. */
static int prune_dbi(MDB_txn *txn, MDB_dbi dbi, const char *before_day, int *count)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return map_err(rc);
    MDB_val k, v;
    size_t bl = strlen(before_day);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        size_t n = k.mv_size < bl ? k.mv_size : bl;
        int c = memcmp(k.mv_data, before_day, n);
        if (c > 0 || (c == 0 && k.mv_size >= bl))
            break;
        rc = mdb_cursor_del(cur, 0);
        if (rc != 0)
            break;
        if (count)
            (*count)++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : map_err(rc);
}

int tlsrpt_store_prune(struct tlsrpt_store *s, const char *before_day)
{
    int64_t t;
    if (s->readonly)
        return ERR_PERM;
    if (tlsrpt_day_parse(before_day, &t) != 0)
        return ERR_INVAL;
    MDB_txn *txn;
    int rc = map_err(mdb_txn_begin(s->env, NULL, 0, &txn));
    if (rc != 0)
        return rc;
    int n = 0;
    rc = prune_dbi(txn, s->records, before_day, &n);
    if (rc == 0)
        rc = prune_dbi(txn, s->seen, before_day, NULL);
    if (rc == 0)
        rc = prune_dbi(txn, s->days, before_day, NULL);
    if (rc == 0)
        rc = map_err(mdb_txn_commit(txn));
    else
        mdb_txn_abort(txn);
    return rc == 0 ? n : rc;
}

/* ---- the report (RFC 8460 4) --------------------------------------------------- */

static void datetime(int64_t t, char *out, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void tlsrpt_report_id(const char *day, uint32_t seq, const char *domain, const char *submitter,
                      char *out, size_t size)
{
    char compact[9] = "";
    for (size_t i = 0, o = 0; day[i] && o < 8; i++)
        if (day[i] != '-')
            compact[o++] = day[i];
    snprintf(out, size, "%s.%u.%s@%s", compact, seq, domain, submitter);
}

/* One failure-details entry: only the members that carry a value. */
static json_t *detail_json(json_t *d)
{
    json_t *f = json_object();
    json_object_set(f, "result-type", json_object_get(d, "rt"));
    static const struct {
        const char *from, *to;
    } opt[] = {
        {"smi", "sending-mta-ip"},
        {"mx", "receiving-mx-hostname"},
        {"helo", "receiving-mx-helo"},
        {"rip", "receiving-ip"},
    };
    for (size_t i = 0; i < sizeof(opt) / sizeof(opt[0]); i++) {
        const char *v = json_string_value(json_object_get(d, opt[i].from));
        if (v && *v)
            json_object_set_new(f, opt[i].to, json_string(v));
    }
    json_object_set_new(f, "failed-session-count", json_integer((json_int_t)get_u64(d, "n")));
    const char *code = json_string_value(json_object_get(d, "code"));
    if (code && *code)
        json_object_set_new(f, "failure-reason-code", json_string(code));
    return f;
}

void tlsrpt_report_id_of(const char *day, uint32_t seq, const char *domain,
                         const struct tlsrpt_report_info *info, char *out, size_t size)
{
    if (!info->node || !*info->node) {
        tlsrpt_report_id(day, seq, domain, info->submitter, out, size);
        return;
    }
    char tag[TLSRPT_DAY_SIZE + 80];
    tlsrpt_node_tag(info->node, tag, sizeof(tag));
    char dom[KEY_MAX];
    snprintf(dom, sizeof(dom), "%s.%s", tag, domain);
    tlsrpt_report_id(day, seq, dom, info->submitter, out, size);
}

void tlsrpt_node_tag(const char *node, char *out, size_t size)
{
    size_t o = 0;
    for (size_t i = 0; node[i] && o + 1 < size && o < 63; i++) {
        char c = node[i];
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        out[o++] = plain ? c : '-';
    }
    if (size)
        out[o] = '\0';
}

/* The report of the record o (consumed). */
static int report_of(json_t *o, const char *day, const char *domain,
                     const struct tlsrpt_report_info *info, uint32_t seq, int64_t end, bool pretty,
                     struct buf *out)
{
    int64_t start;
    if (tlsrpt_day_parse(day, &start) != 0) {
        json_decref(o);
        return ERR_INVAL;
    }
    if (end <= start || end > start + 86399)
        end = start + 86399;
    char t0[32], t1[32], id[KEY_MAX];
    datetime(start, t0, sizeof(t0));
    datetime(end, t1, sizeof(t1));
    tlsrpt_report_id_of(day, seq, domain, info, id, sizeof(id));

    json_t *r = json_object();
    json_object_set_new(r, "organization-name", json_string(info->organization_name));
    json_t *range = json_object();
    json_object_set_new(range, "start-datetime", json_string(t0));
    json_object_set_new(range, "end-datetime", json_string(t1));
    json_object_set_new(r, "date-range", range);
    json_object_set_new(r, "contact-info", json_string(info->contact_info));
    json_object_set_new(r, "report-id", json_string(id));
    json_t *policies = json_array();
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(o, "policies"), i, p)
    {
        json_t *e = json_object();
        json_t *pol = json_object();
        const char *type = json_string_value(json_object_get(p, "type"));
        json_object_set_new(pol, "policy-type", json_string(type ? type : "no-policy-found"));
        json_object_set(pol, "policy-string", json_object_get(p, "strings"));
        json_object_set_new(pol, "policy-domain", json_string(domain));
        json_object_set(pol, "mx-host", json_object_get(p, "mx"));
        json_object_set_new(e, "policy", pol);
        json_t *sum = json_object();
        json_object_set_new(sum, "total-successful-session-count",
                            json_integer((json_int_t)get_u64(p, "ok")));
        json_object_set_new(sum, "total-failure-session-count",
                            json_integer((json_int_t)get_u64(p, "fail")));
        json_object_set_new(e, "summary", sum);
        json_t *details = json_array();
        size_t j;
        json_t *d;
        json_array_foreach(json_object_get(p, "details"), j, d)
        {
            json_array_append_new(details, detail_json(d));
        }
        json_object_set_new(e, "failure-details", details);
        json_array_append_new(policies, e);
    }
    json_object_set_new(r, "policies", policies);
    json_decref(o);
    char *text = json_dumps(r, JSON_PRESERVE_ORDER | (pretty ? JSON_INDENT(2) : JSON_COMPACT));
    json_decref(r);
    if (!text)
        return ERR_NOMEM;
    int rc = buf_append_str(out, text);
    free(text);
    return rc;
}

int tlsrpt_report_json(struct tlsrpt_store *s, const char *day, const char *domain,
                       const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                       bool pretty, struct buf *out)
{
    json_t *o;
    int rc = get_record(s, day, domain, &o);
    return rc != 0 ? rc : report_of(o, day, domain, info, seq, end, pretty, out);
}

int tlsrpt_report_json_record(const char *rec, size_t len, const char *day, const char *domain,
                              const struct tlsrpt_report_info *info, uint32_t seq, int64_t end,
                              bool pretty, struct buf *out)
{
    MDB_val v = {len, (void *)rec};
    json_t *o = load_json(&v);
    return o ? report_of(o, day, domain, info, seq, end, pretty, out) : ERR_INVAL;
}
