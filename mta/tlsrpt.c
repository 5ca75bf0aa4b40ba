/*
 * tlsrpt.c - TLS-RPT in the daemon (RFC 8460; docs/tlsrpt.md): the store
 * delivery counts sessions in (<queue_directory>/tlsrpt.lmdb, synced every
 * minute and at exit), the daily send of every completed UTC day after
 * midnight plus a random delay, retries of failed https POSTs, and the
 * control command "tlsrpt_send" behind `convoyctl tlsrpt send`.
 *
 * A send run walks (day, domain) records one at a time: TXT
 * _smtp._tls.DOMAIN (tlsrpt_txt_select()); no usable record: nothing is
 * sent and the record goes. Else the report is built once and handed to
 * every rua: https: a POST of the gzip (application/tlsrpt+gzip) over
 * verified TLS, 2xx is success; mailto: tlsrpt_mail_build(), DKIM-signed
 * for the submitter domain, queued with QUEUE_F_TLS_OPTIONAL (TLS-Required:
 * No: delivered whatever the recipient's policy, never counted itself).
 * A full day's record is deleted when every rua took it or retries gave
 * up; a partial day (convoyctl tlsrpt send --date today) moves the
 * record's report sequence on, so the full day gets its own report-id.
 *
 * In a fleet (shared_state) the report of a full day goes through the
 * fleet's claim (tlsrpt_fleet.c) after the TXT lookup: sent by the fleet
 * already (the record goes, nothing is sent), another node sending it
 * (asked again after CONVOY_TLSRPT_FLEET_RETRY), or ours (the fleet's sum
 * is sent under the fleet's number, and the sent marker set once every
 * rua took it). Redis away: the day waits CONVOY_TLSRPT_FLEET_WAIT after
 * its end, then this node reports alone and keeps zero counts.
 *
 * Retry state (https rua that failed) is kept in
 * <queue_directory>/tlsrpt-pending.json, so a restart keeps retrying.
 *
 * Test and operator knobs (environment, read at start):
 *  CONVOY_TLSRPT_DELAY  the random delay's bound after midnight, seconds
 *                       (default 14400)
 *  CONVOY_TLSRPT_NOW    the daemon's idea of "now" for sending, seconds
 *                       since the epoch at start (the clock then runs on)
 *  CONVOY_TLSRPT_RETRY  the first retry interval, seconds (default 600;
 *                       doubles per attempt up to 4 hours, for 26 hours)
 *  CONVOY_TLSRPT_HTTPS_PORT  connect to this port for every https rua
 *  CONVOY_TLSRPT_FLEET_WAIT  how long after its day a report waits for an
 *                       away shared state, seconds (default 43200)
 *  CONVOY_TLSRPT_FLEET_RETRY when a report the fleet is busy with or
 *                       waiting for is asked again, seconds (default 300)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "dkim.h"
#include "dns.h"
#include "mta.h"
#include "policy.h"
#include "queue.h"
#include "settings.h"
#include "shared.h"

#define COMP "tlsrpt"
#define GIVE_UP_S (26 * 3600)
#define RETRY_MAX_S (4 * 3600)
#define MAX_ITEMS 20000
/* Days kept in the store (more than SHARED_TLSRPT_TTL_S). */
#define KEEP_DAYS 7

struct item {
    char day[TLSRPT_DAY_SIZE];
    char domain[POLICY_NAME_MAX];
    uint32_t seq; /* the report sequence of the record */
    bool fleet;   /* the record is the fleet's sum (the fleet's report) */
};

/* One pending https delivery of a full day's report. */
struct pending {
    char day[TLSRPT_DAY_SIZE];
    char domain[POLICY_NAME_MAX];
    char rua[TLSRPT_URI_MAX];
    int attempts;
    int64_t first, next;
};

struct run;

static struct {
    struct mta *m;
    struct tlsrpt_store *store;
    uv_timer_t sync_timer, send_timer;
    bool timers;
    struct dns *dns;
    struct tls_ctx *tls;
    int64_t clock_offset; /* CONVOY_TLSRPT_NOW - the real clock at start */
    int64_t delay_max, retry_base;
    int64_t fleet_wait, fleet_retry; /* CONVOY_TLSRPT_FLEET_WAIT, _FLEET_RETRY */
    int64_t fleet_retry_at;          /* a run deferred a report for the fleet: not before */
    uint16_t https_port;
    struct run *running;
    struct pending *pend;
    size_t n_pend;
    char pend_path[4200];
} g;

static int64_t now_s(void)
{
    return time_now_ms() / 1000 + g.clock_offset;
}

/* ---- pending retries (a small JSON file) ----------------------------------- */

static void pend_save(void)
{
    json_t *a = json_array();
    for (size_t i = 0; i < g.n_pend; i++) {
        struct pending *p = &g.pend[i];
        json_array_append_new(a,
                              json_pack("{s:s,s:s,s:s,s:i,s:I,s:I}", "day", p->day, "domain",
                                        p->domain, "rua", p->rua, "attempts", p->attempts, "first",
                                        (json_int_t)p->first, "next", (json_int_t)p->next));
    }
    char tmp[4300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", g.pend_path);
    if (json_dump_file(a, tmp, JSON_COMPACT) != 0 || rename(tmp, g.pend_path) != 0)
        log_warn(COMP, "cannot write %s: %s", g.pend_path, strerror(errno));
    json_decref(a);
}

static void pend_load(void)
{
    json_t *a = json_load_file(g.pend_path, 0, NULL);
    if (!json_is_array(a)) {
        json_decref(a);
        return;
    }
    size_t n = json_array_size(a);
    g.pend = calloc(n ? n : 1, sizeof(*g.pend));
    for (size_t i = 0; g.pend && i < n; i++) {
        const char *day, *domain, *rua;
        int attempts;
        json_int_t first, next;
        if (json_unpack(json_array_get(a, i), "{s:s,s:s,s:s,s:i,s:I,s:I}", "day", &day, "domain",
                        &domain, "rua", &rua, "attempts", &attempts, "first", &first, "next",
                        &next) != 0)
            continue;
        struct pending *p = &g.pend[g.n_pend++];
        str_copy(p->day, day, sizeof(p->day));
        str_copy(p->domain, domain, sizeof(p->domain));
        str_copy(p->rua, rua, sizeof(p->rua));
        p->attempts = attempts;
        p->first = first;
        p->next = next;
    }
    json_decref(a);
}

static struct pending *pend_find(const char *day, const char *domain, const char *rua)
{
    for (size_t i = 0; i < g.n_pend; i++)
        if (strcmp(g.pend[i].day, day) == 0 && strcmp(g.pend[i].domain, domain) == 0 &&
            (!rua || strcmp(g.pend[i].rua, rua) == 0))
            return &g.pend[i];
    return NULL;
}

static void pend_remove(struct pending *p)
{
    size_t i = (size_t)(p - g.pend);
    memmove(&g.pend[i], &g.pend[i + 1], (g.n_pend - i - 1) * sizeof(*p));
    g.n_pend--;
}

static void pend_add(const char *day, const char *domain, const char *rua, int64_t now)
{
    struct pending *np = realloc(g.pend, (g.n_pend + 1) * sizeof(*np));
    if (!np)
        return;
    g.pend = np;
    struct pending *p = &g.pend[g.n_pend++];
    memset(p, 0, sizeof(*p));
    str_copy(p->day, day, sizeof(p->day));
    str_copy(p->domain, domain, sizeof(p->domain));
    str_copy(p->rua, rua, sizeof(p->rua));
    p->first = now;
    p->attempts = 1;
    p->next = now + g.retry_base;
}

/* ---- a send run ------------------------------------------------------------- */

struct run {
    struct control_req *req; /* NULL: the automatic run */
    json_t *out;             /* "reports" */
    bool dry_run, partial, retry_only;
    int64_t end; /* partial: the range's end */
    struct item *items;
    size_t n, i;
    /* the current item */
    struct tlsrpt_record rec;
    size_t rua;
    struct tlsrpt_report rep;
    bool have_rep;
    bool any_sent;
    bool alone; /* the current report is this node's alone, in a fleet */
    struct settings_tlsrpt_names names;
};

static void run_next_item(struct run *r);
static void run_next_rua(struct run *r);
static void schedule(void);

static void run_log(struct run *r, const char *rua, const char *result, const char *why)
{
    const struct item *it = &r->items[r->i];
    log_info(COMP, "report domain=%s day=%s rua=%s report-id=%s size=%zu result=%s%s%s", it->domain,
             it->day, rua, r->have_rep ? r->rep.report_id : "-", r->have_rep ? r->rep.gz.len : 0,
             result, why && *why ? ": " : "", why && *why ? why : "");
    json_array_append_new(r->out, json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s}", "domain", it->domain,
                                            "day", it->day, "rua", rua, "report_id",
                                            r->have_rep ? r->rep.report_id : "", "size",
                                            (json_int_t)(r->have_rep ? r->rep.gz.len : 0), "result",
                                            result, "why", why ? why : ""));
}

static void run_end(struct run *r)
{
    if (r->req) {
        json_t *resp = json_pack("{s:o}", "reports", r->out);
        control_reply(r->req, resp);
    } else {
        json_decref(r->out);
        /* The bound on what is kept (policy.h): days that could not be
         * sent, and the zero records of days a fleet node reported alone
         * (kept past the shared records' lifetime). */
        char before[TLSRPT_DAY_SIZE];
        tlsrpt_day_of(now_s() - KEEP_DAYS * 86400, before);
        int n = tlsrpt_store_prune(g.store, before);
        if (n > 0)
            log_info(COMP, "dropped %d record(s) of days before %s", n, before);
    }
    if (r->have_rep)
        tlsrpt_report_clear(&r->rep);
    free(r->items);
    free(r);
    g.running = NULL;
    tlsrpt_store_sync(g.store);
    schedule();
}

/* The item is done with every rua (or there was none to send to). */
static void item_done(struct run *r, bool delete_record)
{
    const struct item *it = &r->items[r->i];
    if (!r->dry_run && it->fleet && !r->partial && delete_record)
        tlsrpt_fleet_sent(g.m, it->day, it->domain, r->have_rep ? r->rep.report_id : "");
    if (!r->dry_run) {
        if (r->partial) {
            uint32_t seq;
            if (r->any_sent)
                tlsrpt_store_next_seq(g.store, it->day, it->domain, &seq);
        } else if (delete_record && !pend_find(it->day, it->domain, NULL)) {
            /* Reported alone: zero counts stay, to be published, so the
             * fleet never reports these sessions again. */
            if (r->alone)
                tlsrpt_store_zero(g.store, it->day, it->domain);
            else
                tlsrpt_store_delete(g.store, it->day, it->domain);
        }
    }
    if (r->have_rep) {
        tlsrpt_report_clear(&r->rep);
        r->have_rep = false;
    }
    r->alone = false;
    r->i++;
    run_next_item(r);
}

static void post_cb(void *arg, const struct policy_post_result *res)
{
    struct run *r = arg;
    const struct item *it = &r->items[r->i];
    const char *rua = r->rec.rua[r->rua];
    int64_t now = now_s();
    struct pending *p = pend_find(it->day, it->domain, rua);
    if (res->status == 0) {
        char why[32];
        snprintf(why, sizeof(why), "HTTP %d", res->http_status);
        run_log(r, rua, "sent", why);
        r->any_sent = true;
        if (p) {
            pend_remove(p);
            pend_save();
        }
    } else {
        bool give_up = false;
        if (!r->partial) {
            if (!p) {
                pend_add(it->day, it->domain, rua, now);
            } else {
                p->attempts++;
                int64_t iv = g.retry_base;
                for (int k = 1; k < p->attempts && iv < RETRY_MAX_S; k++)
                    iv *= 2;
                if (iv > RETRY_MAX_S)
                    iv = RETRY_MAX_S;
                p->next = now + iv;
                if (now - p->first >= GIVE_UP_S) {
                    give_up = true;
                    pend_remove(p);
                }
            }
            pend_save();
        }
        run_log(r, rua, give_up ? "given-up" : r->partial ? "failed" : "deferred", res->why);
    }
    r->rua++;
    run_next_rua(r);
}

/* Sign the report mail for the submitter domain (RFC 8460 5.3). */
static int sign_mail(struct run *r, const struct buf *msg, struct buf *out)
{
    struct dkim_keytable *keys = submission_dkim(g.m);
    const struct dkim_signer *sg[8];
    size_t n = 0;
    char dom[POLICY_NAME_MAX];
    if (keys && policy_domain_normalize(r->names.submitter, dom) == 0)
        n = dkim_keytable_find(keys, dom, sg, 8);
    if (n == 0) {
        log_warn(COMP,
                 "no DKIM key for the submitter domain %s in dkim_key_table: report "
                 "mailed unsigned (receivers may ignore it, RFC 8460 5.3)",
                 r->names.submitter);
        return buf_append(out, msg->data, msg->len);
    }
    if (n > 8)
        n = 8;
    struct dkim_headers h;
    int rc = dkim_headers_parse(msg->data, msg->len, &h);
    struct buf why;
    buf_init(&why, 4096);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        struct dkim_sign_opts o = {
            .domain = sg[i]->domain,
            .selector = sg[i]->selector,
            .key = sg[i]->key,
            .t = time_now_ms() / 1000,
        };
        rc = dkim_sign(&o, msg->data, msg->len, &h, out, &why);
    }
    if (rc == 0)
        rc = buf_append(out, msg->data, msg->len);
    else
        log_err(COMP, "DKIM signing of a report failed: %s", why.data ? why.data : err_str(rc));
    buf_free(&why);
    dkim_headers_free(&h);
    return rc;
}

struct mail_submit {
    char rua[TLSRPT_URI_MAX];
    char report_id[POLICY_NAME_MAX * 2 + 32];
    struct buf body;
};

static void mail_submitted(void *arg, int status, const char *id)
{
    struct mail_submit *ms = arg;
    if (status == 0)
        log_info(COMP, "%s: report %s queued for %s", id, ms->report_id, ms->rua);
    else
        log_err(COMP, "report %s for %s: cannot queue: %s", ms->report_id, ms->rua,
                err_str(status));
    buf_free(&ms->body);
    free(ms);
}

static void send_mail(struct run *r, const char *rua)
{
    char to[TLSRPT_URI_MAX];
    if (tlsrpt_mailto_address(rua, to, sizeof(to)) != 0) {
        run_log(r, rua, "failed", "not a usable mailto: URI");
        return;
    }
    const struct item *it = &r->items[r->i];
    struct tlsrpt_mail mm = {
        .from = r->names.sender,
        .to = to,
        .policy_domain = it->domain,
        .submitter = r->names.submitter,
        .report_id = r->rep.report_id,
        .filename = r->rep.filename,
        .gz = r->rep.gz.data,
        .gz_len = r->rep.gz.len,
        .date = now_s(),
        .begin = r->rep.begin,
        .end = r->rep.end,
    };
    struct buf msg;
    buf_init(&msg, 16u << 20);
    struct mail_submit *ms = calloc(1, sizeof(*ms));
    int rc = ms ? tlsrpt_mail_build(&mm, &msg) : ERR_NOMEM;
    if (rc == 0) {
        buf_init(&ms->body, 16u << 20);
        rc = sign_mail(r, &msg, &ms->body);
    }
    buf_free(&msg);
    if (rc == 0) {
        str_copy(ms->rua, rua, sizeof(ms->rua));
        str_copy(ms->report_id, r->rep.report_id, sizeof(ms->report_id));
        struct queue_rcpt_in rc_in = {.addr = to};
        struct queue_envelope env = {
            .sender = r->names.sender,
            .client_name = "localhost",
            .client_addr = "127.0.0.1",
            .helo = "localhost",
            .tls = "",
            .ret = QUEUE_RET_NONE,
            .flags = QUEUE_F_TLS_OPTIONAL,
        };
        rc = queue_submit(g.m->queue, &env, &rc_in, 1, ms->body.data, ms->body.len, mail_submitted,
                          ms);
    }
    if (rc != 0) {
        if (ms)
            buf_free(&ms->body);
        free(ms);
        run_log(r, rua, "failed", err_str(rc));
        return;
    }
    r->any_sent = true;
    run_log(r, rua, "queued", to);
}

static void run_next_rua(struct run *r)
{
    const struct item *it = &r->items[r->i];
    while (r->rua < r->rec.n_rua) {
        const char *rua = r->rec.rua[r->rua];
        bool https = strncasecmp(rua, "https:", 6) == 0;
        struct pending *p = pend_find(it->day, it->domain, rua);
        if (!r->partial && !r->dry_run && r->retry_only && !p) {
            r->rua++; /* done in an earlier run */
            continue;
        }
        if (p && p->next > now_s() && !r->req) {
            r->rua++; /* not yet */
            continue;
        }
        if (r->dry_run) {
            run_log(r, rua, "dry-run", "");
            r->rua++;
            continue;
        }
        if (!https) {
            send_mail(r, rua);
            r->rua++;
            continue;
        }
        struct policy_post_params pp = {
            .loop = g.m->loop,
            .dns = g.dns,
            .tls = g.tls,
            .url = rua,
            .port = g.https_port,
            .content_type = "application/tlsrpt+gzip",
            .body = r->rep.gz.data,
            .len = r->rep.gz.len,
            .user_agent = "Convoy/" CONVOY_VERSION,
        };
        int rc = policy_post(&pp, post_cb, r);
        if (rc == 0)
            return; /* post_cb goes on */
        run_log(r, rua, "failed", err_str(rc));
        r->rua++;
    }
    item_done(r, true);
}

/* Build the report of the current item, from the store or from a fleet's
 * sum, and hand it to every rua; alone: this node's counts only while it
 * is part of a fleet (its name goes into the report-id). */
static void build_report(struct run *r, const char *sum, size_t len, uint32_t seq, bool alone)
{
    const struct item *it = &r->items[r->i];
    struct settings_tlsrpt_names *nm = &r->names;
    struct tlsrpt_report_info info = {
        .organization_name = nm->organization,
        .contact_info = nm->contact,
        .submitter = nm->submitter,
        .node = alone ? shared_node(g.m->shared) : NULL,
    };
    int64_t end = r->partial ? r->end : 0;
    int rc =
        sum ? tlsrpt_report_build_record(sum, len, it->day, it->domain, &info, seq, end, &r->rep)
            : tlsrpt_report_build(g.store, it->day, it->domain, &info, seq, end, &r->rep);
    if (rc != 0) {
        json_array_append_new(r->out, json_pack("{s:s,s:s,s:s,s:s}", "domain", it->domain, "day",
                                                it->day, "result", "failed", "why", err_str(rc)));
        r->i++;
        run_next_item(r);
        return;
    }
    r->have_rep = true;
    r->alone = alone;
    r->rua = 0;
    r->any_sent = false;
    run_next_rua(r);
}

/* Leave the current item for a later run (the fleet decides then). */
static void fleet_later(struct run *r, const char *result, const char *why)
{
    const struct item *it = &r->items[r->i];
    json_array_append_new(r->out, json_pack("{s:s,s:s,s:s,s:s}", "domain", it->domain, "day",
                                            it->day, "result", result, "why", why));
    int64_t at = now_s() + g.fleet_retry;
    if (g.fleet_retry_at < at)
        g.fleet_retry_at = at;
    r->i++;
    run_next_item(r);
}

/* Redis is away or failed: a partial report goes out with this node's
 * counts; a full day waits up to fleet_wait after the day for the fleet,
 * then goes out with this node's counts alone. */
static void fleet_away(struct run *r, const char *why)
{
    const struct item *it = &r->items[r->i];
    if (g.m->stopping) {
        r->i = r->n;
        run_next_item(r);
        return;
    }
    int64_t start = 0;
    tlsrpt_day_parse(it->day, &start);
    if (!r->partial && now_s() < start + 86400 + g.fleet_wait) {
        log_warn(COMP, "domain=%s day=%s: report deferred: the fleet's shared state is away (%s)",
                 it->domain, it->day, why);
        fleet_later(r, "deferred", why);
        return;
    }
    log_warn(COMP,
             "domain=%s day=%s: the fleet's shared state is away (%s): this node reports its "
             "own sessions alone",
             it->domain, it->day, why);
    build_report(r, NULL, 0, it->seq, true);
}

static void fleet_cb(void *arg, enum fleet_outcome o, uint32_t seq, const char *who,
                     const char *sum, size_t len)
{
    struct run *r = arg;
    struct item *it = &r->items[r->i];
    switch (o) {
    case FLEET_SEND:
        if (!r->partial) {
            it->fleet = true; /* the store holds the sum now */
            it->seq = seq;
        }
        build_report(r, sum, len, seq, false);
        return;
    case FLEET_SENT:
        log_info(COMP, "domain=%s day=%s: sent by the fleet (report-id %s): nothing to send",
                 it->domain, it->day, who);
        json_array_append_new(r->out, json_pack("{s:s,s:s,s:s,s:s}", "domain", it->domain, "day",
                                                it->day, "result", "sent-by-fleet", "why", who));
        item_done(r, true);
        return;
    case FLEET_BUSY:
        log_info(COMP, "domain=%s day=%s: node %s is sending the fleet's report", it->domain,
                 it->day, who);
        fleet_later(r, "fleet-busy", who);
        return;
    case FLEET_AWAY:
        fleet_away(r, who);
        return;
    }
}

static void txt_cb(void *arg, const struct dns_result *res)
{
    struct run *r = arg;
    const struct item *it = &r->items[r->i];
    const char *recs[64];
    size_t lens[64], n = 0;
    for (size_t i = 0; res->status == DNS_OK && i < res->n_txt && n < 64; i++) {
        recs[n] = res->txt[i].text;
        lens[n++] = res->txt[i].len;
    }
    char why[256] = "";
    int rc = n ? tlsrpt_txt_select(recs, lens, n, &r->rec, why, sizeof(why)) : ERR_NOTFOUND;
    if (rc != 0) {
        /* Nobody to tell: nothing is sent, and a full day's counts go. */
        log_info(COMP, "domain=%s day=%s: no usable _smtp._tls record (%s): no report", it->domain,
                 it->day, why[0] ? why : dns_status_name(res->status));
        json_array_append_new(r->out, json_pack("{s:s,s:s,s:s,s:s}", "domain", it->domain, "day",
                                                it->day, "result", "no-record", "why",
                                                why[0] ? why : dns_status_name(res->status)));
        if (res->status == DNS_TEMPFAIL) {
            r->i++; /* try again next run */
            run_next_item(r);
        } else {
            item_done(r, true);
        }
        return;
    }
    if (g.m->shared && !r->dry_run && !it->fleet && pend_find(it->day, it->domain, NULL)) {
        /* The retry of a report this node sent alone: the same report. */
        build_report(r, NULL, 0, it->seq, true);
        return;
    }
    if (g.m->shared && !r->dry_run && !it->fleet) {
        /* A fleet: one node sends the fleet's report (tlsrpt_fleet.c). */
        if (tlsrpt_fleet_claim(g.m, it->day, it->domain, !r->partial, it->seq, fleet_cb, r) != 0)
            fleet_away(r, "shared state is not up");
        return;
    }
    build_report(r, NULL, 0, it->seq, false);
}
static void run_next_item(struct run *r)
{
    if (r->i >= r->n) {
        run_end(r);
        return;
    }
    const struct item *it = &r->items[r->i];
    char name[POLICY_NAME_MAX + 16];
    snprintf(name, sizeof(name), "_smtp._tls.%s", it->domain);
    if (dns_lookup(g.dns, name, DNS_T_TXT, txt_cb, r, NULL) != 0) {
        r->i++;
        run_next_item(r);
    }
}

struct collect {
    struct run *r;
    const char *domain; /* NULL: every domain */
    const char *before; /* automatic: only days before this one */
};

static int collect_cb(void *arg, const struct tlsrpt_summary *sum)
{
    struct collect *c = arg;
    struct run *r = c->r;
    if (c->domain && strcmp(c->domain, sum->domain) != 0)
        return 0;
    if (c->before && strcmp(sum->day, c->before) >= 0)
        return 0;
    /* Nothing to say: no session counted. */
    if (sum->successful == 0 && sum->failed == 0)
        return 0;
    if (r->n >= MAX_ITEMS)
        return 1;
    struct item *ni = realloc(r->items, (r->n + 1) * sizeof(*ni));
    if (!ni)
        return ERR_NOMEM;
    r->items = ni;
    struct item *it = &r->items[r->n++];
    str_copy(it->day, sum->day, sizeof(it->day));
    str_copy(it->domain, sum->domain, sizeof(it->domain));
    it->seq = sum->reports;
    it->fleet = sum->fleet;
    return 0;
}

/* Start a run: day NULL is the automatic one (every day before today). */
static struct run *run_new(struct control_req *req, const char *day, const char *domain,
                           bool dry_run)
{
    struct run *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->req = req;
    r->out = json_array();
    r->dry_run = dry_run;
    g.fleet_retry_at = 0;
    settings_tlsrpt_names(g.m->conf, &r->names);
    char today[TLSRPT_DAY_SIZE];
    int64_t now = now_s();
    tlsrpt_day_of(now, today);
    struct collect c = {.r = r, .domain = domain};
    if (day) {
        r->partial = strcmp(day, today) >= 0;
        r->end = now;
        tlsrpt_store_each(g.store, day, collect_cb, &c);
    } else {
        c.before = today;
        tlsrpt_store_each(g.store, NULL, collect_cb, &c);
    }
    return r;
}

/* ---- the schedule ---------------------------------------------------------- */

static void send_timer_cb(uv_timer_t *t)
{
    (void)t;
    if (g.running || g.m->stopping) {
        uv_timer_start(&g.send_timer, send_timer_cb, 60000, 0);
        return;
    }
    struct run *r = run_new(NULL, NULL, NULL, false);
    if (!r)
        return;
    g.running = r;
    log_info(COMP, "send run: %zu report(s) of completed days", r->n);
    run_next_item(r);
}

static int has_old_cb(void *arg, const struct tlsrpt_summary *sum)
{
    const char *today = arg;
    return strcmp(sum->day, today) < 0 && (sum->successful || sum->failed) ? 1 : 0;
}

/* The next automatic run: after the next midnight UTC plus a random delay
 * (RFC 8460 4.1: spread the load on collectors); sooner when completed
 * days wait (the daemon was down at midnight) or a retry is due. */
static void schedule(void)
{
    if (!g.timers || g.m->stopping)
        return;
    int64_t now = now_s();
    char today[TLSRPT_DAY_SIZE];
    tlsrpt_day_of(now, today);
    int64_t start;
    tlsrpt_day_parse(today, &start);
    int64_t delay = g.delay_max > 0 ? (int64_t)(random() % (g.delay_max + 1)) : 0;
    int64_t at = start + 86400 + delay;
    if (tlsrpt_store_each(g.store, NULL, has_old_cb, today) == 1)
        at = now + delay;
    /* A report the fleet is sending, or one waiting for Redis: ask again
     * later, not at once. */
    if (g.fleet_retry_at > at && g.fleet_retry_at < start + 86400 + delay)
        at = g.fleet_retry_at;
    for (size_t i = 0; i < g.n_pend; i++)
        if (g.pend[i].next < at)
            at = g.pend[i].next;
    int64_t in = at - now;
    if (in < 1)
        in = 1;
    uv_timer_start(&g.send_timer, send_timer_cb, (uint64_t)in * 1000, 0);
    log_debug(COMP, "next send run in %lld s", (long long)in);
}

static void sync_timer_cb(uv_timer_t *t)
{
    (void)t;
    tlsrpt_store_sync(g.store);
}

/* ---- the control command ---------------------------------------------------- */

/* {"cmd":"tlsrpt_send","date":"YYYY-MM-DD"|"today"|"yesterday","domain":D,
 *  "dry_run":bool} -> {"reports":[{domain, day, rua, report_id, size,
 *  result, why}]} once every report was handed over. */
static void cmd_send(struct mta *m, struct control_req *req, json_t *request)
{
    (void)m;
    if (!g.store) {
        control_reply_error(req, "TLS-RPT is not enabled (tlsrpt_enable = no)");
        return;
    }
    if (g.running) {
        control_reply_error(req, "a send run is in progress; try again");
        return;
    }
    const char *date = json_string_value(json_object_get(request, "date"));
    const char *domain = json_string_value(json_object_get(request, "domain"));
    bool dry = json_is_true(json_object_get(request, "dry_run"));
    char day[TLSRPT_DAY_SIZE];
    int64_t now = now_s();
    if (!date || strcmp(date, "yesterday") == 0) {
        tlsrpt_day_of(now - 86400, day);
    } else if (strcmp(date, "today") == 0) {
        tlsrpt_day_of(now, day);
    } else {
        int64_t st;
        if (tlsrpt_day_parse(date, &st) != 0) {
            control_reply_error(req, "invalid date \"%s\" (YYYY-MM-DD, today, yesterday)", date);
            return;
        }
        str_copy(day, date, sizeof(day));
    }
    char dom[POLICY_NAME_MAX];
    if (domain && policy_domain_normalize(domain, dom) != 0) {
        control_reply_error(req, "invalid domain \"%s\"", domain);
        return;
    }
    struct run *r = run_new(req, day, domain ? dom : NULL, dry);
    if (!r) {
        control_reply_error(req, "out of memory");
        return;
    }
    g.running = r;
    run_next_item(r);
}

/* ---- start and stop ----------------------------------------------------------- */

static int64_t env_int(const char *name, int64_t dflt)
{
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    long long x = strtoll(v, &end, 10);
    return *end ? dflt : (int64_t)x;
}

int mta_tlsrpt_start(struct mta *m, struct buf *err)
{
    g.m = m;
    static bool registered;
    if (!registered) {
        control_register(CTL_CMD_TLSRPT_SEND, cmd_send);
        registered = true;
    }
    if (!m->conf->tlsrpt_enable)
        return 0;
    char path[4200];
    snprintf(path, sizeof(path), "%s/%s", m->conf->queue_directory, TLSRPT_STORE_FILE);
    char why[256] = "";
    int rc = tlsrpt_store_open(path, false, &g.store, why, sizeof(why));
    if (rc != 0) {
        buf_printf(err, "TLS-RPT store %s: %s", path, why[0] ? why : err_str(rc));
        return rc;
    }
    m->tlsrpt = g.store;
    snprintf(g.pend_path, sizeof(g.pend_path), "%s/tlsrpt-pending.json", m->conf->queue_directory);
    pend_load();
    struct dns_options dno;
    settings_dns_options(m->conf, &dno);
    rc = dns_new(m->loop, &dno, &g.dns);
    if (rc != 0) {
        buf_printf(err, "TLS-RPT: resolver: %s", err_str(rc));
        return rc;
    }
    struct policy_options po;
    settings_policy_options(m->conf, &po);
    g.tls = tls_ctx_client_new(po.ca_file, why, sizeof(why));
    if (!g.tls) {
        buf_printf(err, "TLS-RPT: TLS context: %s", why);
        return ERR_TLS;
    }
    int64_t fake = env_int("CONVOY_TLSRPT_NOW", 0);
    g.clock_offset = fake ? fake - time_now_ms() / 1000 : 0;
    g.delay_max = env_int("CONVOY_TLSRPT_DELAY", 14400);
    g.retry_base = env_int("CONVOY_TLSRPT_RETRY", 600);
    if (g.retry_base < 1)
        g.retry_base = 1;
    g.https_port = (uint16_t)env_int("CONVOY_TLSRPT_HTTPS_PORT", 0);
    g.fleet_wait = env_int("CONVOY_TLSRPT_FLEET_WAIT", 12 * 3600);
    g.fleet_retry = env_int("CONVOY_TLSRPT_FLEET_RETRY", 300);
    if (g.fleet_retry < 1)
        g.fleet_retry = 1;
    tlsrpt_fleet_start(m, g.store);
    srandom((unsigned)(time_now_ms() ^ (int64_t)getpid()));
    uv_timer_init(m->loop, &g.sync_timer);
    uv_timer_init(m->loop, &g.send_timer);
    g.timers = true;
    uv_timer_start(&g.sync_timer, sync_timer_cb, 60000, 60000);
    schedule();
    return 0;
}

void mta_tlsrpt_stop(struct mta *m)
{
    tlsrpt_fleet_stop(m);
    if (g.timers) {
        uv_timer_stop(&g.sync_timer);
        uv_timer_stop(&g.send_timer);
    }
}

void mta_tlsrpt_close(struct mta *m)
{
    mta_tlsrpt_stop(m);
    if (g.timers) {
        uv_close((uv_handle_t *)&g.sync_timer, NULL);
        uv_close((uv_handle_t *)&g.send_timer, NULL);
        g.timers = false;
    }
    if (g.dns) {
        dns_free(g.dns);
        g.dns = NULL;
    }
    if (g.tls) {
        tls_ctx_free(g.tls);
        g.tls = NULL;
    }
    tlsrpt_fleet_close(m);
    m->tlsrpt = NULL;
    tlsrpt_store_close(g.store);
    g.store = NULL;
    free(g.pend);
    g.pend = NULL;
    g.n_pend = 0;
}
