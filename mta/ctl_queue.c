/*
 * ctl_queue.c - convoyctl queue: look at the queue directly in LMDB,
 * read-only, whether convoyd runs or not (LMDB lets readers run beside the
 * one writer; a reader sees the last committed state).
 *
 *   convoyctl queue list           one line per message:
 *     ID SIZE ARRIVAL <SENDER> RCPT:STATE[(last reason)] ...
 *   convoyctl queue list --json    NDJSON, one object per message, each with
 *                                  "version": 1 (the shape of the object)
 *
 * Exit codes: 0 ok, 1 failure (no queue, unreadable records), 2 usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "mta.h"
#include "queue.h"

#define CTL_QUEUE_JSON_VERSION 1

static void queue_usage(void)
{
    fprintf(stderr, "usage: convoyctl queue list [--json]\n");
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

struct list_ctx {
    bool json;
    uint64_t messages;
    uint64_t bytes;
    int err;
};

static int print_plain(struct list_ctx *x, const struct queue_message *m)
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
        if (r->has_result && (r->state == QUEUE_RCPT_DEFERRED || r->state == QUEUE_RCPT_BOUNCED ||
                              r->state == QUEUE_RCPT_HELD)) {
            printf("(");
            if (r->last.dsn[0])
                printf("%s ", r->last.dsn);
            print_oneline(stdout, r->last.text);
            printf(")");
        }
    }
    printf("\n");
    (void)x;
    return 0;
}

/* A JSON string; bytes that are not UTF-8 become '?' rather than dropping
 * the value (mail may carry 8-bit junk in envelope fields). */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    if (j)
        return j;
    size_t n = strlen(s);
    char *t = malloc(n + 1);
    if (!t)
        return json_null();
    for (size_t i = 0; i <= n; i++)
        t[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
    j = json_string(t);
    free(t);
    return j ? j : json_null();
}

static json_t *jtime(int64_t ms)
{
    char when[32];
    if (ms <= 0)
        return json_null();
    iso_time(ms, when, sizeof(when));
    return json_string(when);
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

static int print_json(struct list_ctx *x, const struct queue_message *m)
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
        json_object_set_new(j, r->state == QUEUE_RCPT_ACTIVE ? "lease_until" : "next_attempt",
                            jtime(r->next_ms));
        json_object_set_new(j, "last_result", r->has_result ? result_json(&r->last) : json_null());
        json_array_append_new(rs, j);
    }
    json_object_set_new(o, "recipients", rs);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s) {
        x->err = ERR_NOMEM;
        return 1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

static int list_one(void *arg, const struct queue_message *m)
{
    struct list_ctx *x = arg;
    x->messages++;
    x->bytes += m->env.size;
    return x->json ? print_json(x, m) : print_plain(x, m);
}

static int queue_list_cmd(struct conf *c, bool json)
{
    struct queue_options o;
    mta_queue_options(c, &o);
    o.read_only = true;
    struct queue *q;
    struct buf why;
    buf_init(&why, 1024);
    int rc = queue_open(NULL, &o, &q, &why);
    if (rc) {
        fprintf(stderr, "convoyctl: queue: %s\n", why.len ? why.data : err_str(rc));
        buf_free(&why);
        return 1;
    }
    buf_free(&why);
    struct list_ctx x = {.json = json};
    rc = queue_list(q, NULL, list_one, &x);
    queue_close(q);
    if (fflush(stdout) != 0)
        return 1;
    if (rc == ERR_CORRUPT) {
        fprintf(stderr, "convoyctl: queue: some records do not decode and were skipped\n");
        return 1;
    }
    if (rc || x.err) {
        fprintf(stderr, "convoyctl: queue: %s\n", err_str(rc ? rc : x.err));
        return 1;
    }
    if (!json) {
        if (x.messages == 0)
            printf("queue is empty\n");
        else
            printf("-- %llu messages, %llu bytes\n", (unsigned long long)x.messages,
                   (unsigned long long)x.bytes);
    }
    return 0;
}

int ctl_queue(struct conf *c, int argc, char **argv)
{
    if (argc < 2) {
        queue_usage();
        return 2;
    }
    if (strcmp(argv[1], "list") == 0) {
        bool json = false;
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--json") == 0) {
                json = true;
            } else {
                queue_usage();
                return 2;
            }
        }
        return queue_list_cmd(c, json);
    }
    queue_usage();
    return 2;
}
