/*
 * qfilter.c - message selection for convoyctl queue and qshape buckets.
 * See qfilter.h for the rules.
 */
#include "qfilter.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

const char *const qshape_labels[QSHAPE_BUCKETS] = {"5",   "10",  "20",  "40",   "80",
                                                   "160", "320", "640", "1280", "1280+"};

void qfilter_init(struct qfilter *f)
{
    memset(f, 0, sizeof(*f));
    f->older_s = -1;
    f->younger_s = -1;
}

void qfilter_free(struct qfilter *f)
{
    if (f->has_from)
        regfree(&f->from);
    if (f->has_to)
        regfree(&f->to);
    if (f->has_reason)
        regfree(&f->reason);
    f->has_from = f->has_to = f->has_reason = false;
}

static int compile(regex_t *re, bool *has, const char *opt, const char *val, char *why,
                   size_t why_size)
{
    if (*has) {
        snprintf(why, why_size, "%s given twice", opt);
        return ERR_INVAL;
    }
    int rc = regcomp(re, val, REG_EXTENDED | REG_ICASE | REG_NOSUB);
    if (rc != 0) {
        char e[160];
        regerror(rc, re, e, sizeof(e));
        snprintf(why, why_size, "%s: bad regular expression \"%.100s\": %s", opt, val, e);
        return ERR_INVAL;
    }
    *has = true;
    return 1;
}

int qfilter_option(struct qfilter *f, const char *opt, const char *val, char *why, size_t why_size)
{
    int rc;
    if (strcmp(opt, "--state") == 0) {
        int s;
        for (s = 0; s <= QUEUE_RCPT_BOUNCED; s++)
            if (strcmp(val, queue_rcpt_state_name(s)) == 0)
                break;
        if (s > QUEUE_RCPT_BOUNCED) {
            snprintf(why, why_size,
                     "--state: unknown state \"%.60s\" (queued, active, deferred, held, "
                     "delivered, bounced)",
                     val);
            return ERR_INVAL;
        }
        f->states |= 1u << s;
        rc = 1;
    } else if (strcmp(opt, "--from") == 0) {
        rc = compile(&f->from, &f->has_from, opt, val, why, why_size);
    } else if (strcmp(opt, "--to") == 0) {
        rc = compile(&f->to, &f->has_to, opt, val, why, why_size);
    } else if (strcmp(opt, "--reason") == 0) {
        rc = compile(&f->reason, &f->has_reason, opt, val, why, why_size);
    } else if (strcmp(opt, "--domain") == 0) {
        if (!val[0] || strlen(val) >= sizeof(f->domain) || strchr(val, '@')) {
            snprintf(why, why_size, "--domain: expected a domain name, not \"%.60s\"", val);
            return ERR_INVAL;
        }
        str_copy(f->domain, val, sizeof(f->domain));
        size_t n = strlen(f->domain);
        if (n > 1 && f->domain[n - 1] == '.')
            f->domain[n - 1] = 0;
        rc = 1;
    } else if (strcmp(opt, "--older") == 0 || strcmp(opt, "--younger") == 0) {
        int64_t s;
        if (time_parse_duration(val, &s) != 0 || s < 0) {
            snprintf(why, why_size, "%s: bad duration \"%.60s\" (like 30s, 5m, 2h, 3d)", opt, val);
            return ERR_INVAL;
        }
        if (opt[2] == 'o')
            f->older_s = s;
        else
            f->younger_s = s;
        rc = 1;
    } else {
        return 0;
    }
    if (rc == 1)
        f->any = true;
    return rc;
}

void qfilter_reason(const struct queue_rcpt *r, char *out, size_t size)
{
    out[0] = 0;
    if (!r->has_result || size == 0)
        return;
    const struct queue_result *l = &r->last;
    char sts[200] = "";
    if (l->sts_mode[0] && strcmp(l->sts_mode, "none") != 0)
        snprintf(sts, sizeof(sts), "%ssts=%.20s%s%.64s", l->mx[0] ? ", " : "", l->sts_mode,
                 l->sts_id[0] ? " id=" : "", l->sts_id);
    char where[400] = "";
    /* The MX, unless the text names it already ("host mx[ip] said: ..."). */
    const char *mx = l->mx[0] && !strstr(l->text, l->mx) ? l->mx : "";
    const char *ip = mx[0] ? l->ip : "";
    if (!mx[0] && sts[0] == ',')
        memmove(sts, sts + 2, strlen(sts + 2) + 1);
    if (mx[0] || sts[0])
        snprintf(where, sizeof(where), " (%s%.255s%s%.64s%s%s)", mx[0] ? "mx=" : "", mx,
                 ip[0] ? "[" : "", ip, ip[0] ? "]" : "", sts);
    snprintf(out, size, "%s%s%s%s", l->dsn, l->dsn[0] ? " " : "", l->text, where);
    for (char *p = out; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
}

bool qfilter_rcpt(const struct qfilter *f, const struct queue_rcpt *r)
{
    if (f->states && !(f->states & (1u << r->state)))
        return false;
    if (f->has_to && regexec(&f->to, r->addr, 0, NULL, 0) != 0)
        return false;
    if (f->domain[0]) {
        char d[256];
        addr_domain(r->addr, d, sizeof(d));
        if (strcasecmp(d, f->domain) != 0)
            return false;
    }
    if (f->has_reason) {
        char reason[2048];
        qfilter_reason(r, reason, sizeof(reason));
        if (!r->has_result || regexec(&f->reason, reason, 0, NULL, 0) != 0)
            return false;
    }
    return true;
}

bool qfilter_match(const struct qfilter *f, const struct queue_message *m, int64_t now_ms)
{
    if (f->has_from && regexec(&f->from, m->env.sender, 0, NULL, 0) != 0)
        return false;
    int64_t age_ms = now_ms - m->env.arrival_ms;
    if (f->older_s >= 0 && age_ms < f->older_s * 1000)
        return false;
    if (f->younger_s >= 0 && age_ms > f->younger_s * 1000)
        return false;
    for (size_t i = 0; i < m->n_rcpts; i++)
        if (qfilter_rcpt(f, &m->rcpts[i]))
            return true;
    return false;
}

int qshape_bucket(int64_t age_ms)
{
    for (int i = 0; i < QSHAPE_BUCKETS - 1; i++)
        if (age_ms <= (int64_t)(5 << i) * 60000)
            return i;
    return QSHAPE_BUCKETS - 1;
}
