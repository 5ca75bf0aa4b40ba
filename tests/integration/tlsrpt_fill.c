/*
 * tlsrpt_fill.c - record TLS-RPT sessions into a store, for the tests
 * (test_tlsrpt.py), through the same call the delivery engine makes.
 *
 *   tlsrpt_fill STORE < LINES
 *
 * Each line is one session, "key=value" words separated by spaces:
 *   domain=D time=SECONDS result=NAME|success [type=sts|tlsa|none]
 *   [mode=enforce|testing|none] [pattern=P]... [max_age=N] [mx=HOST]
 *   [rip=IP] [smi=IP] [helo=NAME] [code=TEXT] [id=SESSION-ID] [count=N]
 * ("_" in code stands for a space; count repeats the session, each repeat
 * with id "ID.K" when an id is given). Prints one line per input line:
 * "recorded N", "exists" or the error. Exit 0 unless an error other than
 * ERR_EXISTS happened (2 for a bad line).
 *
 *   tlsrpt_fill STORE --mail DAY DOMAIN SUBMITTER FROM TO [SEQ]
 *
 * prints the report of (DAY, DOMAIN) as the mail message the daemon will
 * queue for a mailto: rua (tlsrpt_report_build(), tlsrpt_mail_build()),
 * organization "Test Org", contact FROM.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"

#define MAX_PATTERNS 16

static int mail(struct tlsrpt_store *s, char **argv, int argc)
{
    struct tlsrpt_report_info info = {
        .organization_name = "Test Org", .contact_info = argv[3], .submitter = argv[2]};
    uint32_t seq = argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 0;
    struct tlsrpt_report rep;
    int rc = tlsrpt_report_build(s, argv[0], argv[1], &info, seq, 0, &rep);
    if (rc != 0) {
        fprintf(stderr, "tlsrpt_fill: report: %s\n", err_str(rc));
        return 1;
    }
    struct tlsrpt_mail m = {
        .from = argv[3],
        .to = argv[4],
        .policy_domain = argv[1],
        .submitter = argv[2],
        .report_id = rep.report_id,
        .filename = rep.filename,
        .gz = rep.gz.data,
        .gz_len = rep.gz.len,
        .date = rep.end + 1 + 3600,
        .begin = rep.begin,
        .end = rep.end,
    };
    struct buf out;
    buf_init(&out, 64 * 1024 * 1024);
    rc = tlsrpt_mail_build(&m, &out);
    if (rc == 0)
        fwrite(out.data, 1, out.len, stdout);
    else
        fprintf(stderr, "tlsrpt_fill: mail: %s\n", err_str(rc));
    buf_free(&out);
    tlsrpt_report_clear(&rep);
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 8 && argc <= 9 && strcmp(argv[2], "--mail") == 0) {
        struct tlsrpt_store *ms;
        char mwhy[512];
        if (tlsrpt_store_open(argv[1], true, &ms, mwhy, sizeof(mwhy)) != 0) {
            fprintf(stderr, "tlsrpt_fill: %s\n", mwhy);
            return 1;
        }
        int rc = mail(ms, argv + 3, argc - 3);
        tlsrpt_store_close(ms);
        return rc;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: tlsrpt_fill STORE < LINES\n");
        return 2;
    }
    struct tlsrpt_store *s;
    char why[512];
    if (tlsrpt_store_open(argv[1], false, &s, why, sizeof(why)) != 0) {
        fprintf(stderr, "tlsrpt_fill: %s\n", why);
        return 1;
    }
    char line[8192];
    int status = 0;
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        struct tlsrpt_session_result r;
        memset(&r, 0, sizeof(r));
        char *patterns[MAX_PATTERNS];
        struct sts_policy sts = {.mode = POLICY_MODE_ENFORCE, .max_age = 86400, .mx = patterns};
        const char *id = NULL;
        unsigned long count = 1;
        bool bad = false;
        r.policy_type = TLSRPT_POLICY_STS;
        for (char *save = NULL, *w = strtok_r(line, " ", &save); w;
             w = strtok_r(NULL, " ", &save)) {
            char *v = strchr(w, '=');
            if (!v) {
                bad = true;
                break;
            }
            *v++ = '\0';
            if (strcmp(w, "domain") == 0)
                r.policy_domain = v;
            else if (strcmp(w, "time") == 0)
                r.time = strtoll(v, NULL, 10);
            else if (strcmp(w, "result") == 0) {
                if (strcmp(v, "success") == 0)
                    r.result = TLSRPT_SUCCESS;
                else if (tlsrpt_result_from_name(v, &r.result) != 0)
                    bad = true;
            } else if (strcmp(w, "type") == 0)
                r.policy_type = strcmp(v, "sts") == 0    ? TLSRPT_POLICY_STS
                                : strcmp(v, "tlsa") == 0 ? TLSRPT_POLICY_TLSA
                                                         : TLSRPT_POLICY_NO_POLICY;
            else if (strcmp(w, "mode") == 0)
                sts.mode = strcmp(v, "testing") == 0 ? POLICY_MODE_TESTING
                           : strcmp(v, "none") == 0  ? POLICY_MODE_NONE
                                                     : POLICY_MODE_ENFORCE;
            else if (strcmp(w, "pattern") == 0 && sts.n_mx < MAX_PATTERNS)
                patterns[sts.n_mx++] = v;
            else if (strcmp(w, "max_age") == 0)
                sts.max_age = (uint32_t)strtoul(v, NULL, 10);
            else if (strcmp(w, "mx") == 0)
                r.receiving_mx_hostname = v;
            else if (strcmp(w, "rip") == 0)
                r.receiving_ip = v;
            else if (strcmp(w, "smi") == 0)
                r.sending_mta_ip = v;
            else if (strcmp(w, "helo") == 0)
                r.receiving_mx_helo = v;
            else if (strcmp(w, "code") == 0) {
                for (char *p = v; *p; p++)
                    if (*p == '_')
                        *p = ' ';
                r.failure_reason_code = v;
            } else if (strcmp(w, "id") == 0)
                id = v;
            else if (strcmp(w, "count") == 0)
                count = strtoul(v, NULL, 10);
            else
                bad = true;
        }
        if (bad || !r.policy_domain) {
            printf("bad line\n");
            status = 2;
            continue;
        }
        if (r.policy_type == TLSRPT_POLICY_STS)
            r.sts = &sts;
        unsigned long done = 0;
        int rc = 0;
        for (unsigned long k = 0; k < count; k++) {
            char sid[TLSRPT_SESSION_ID_MAX + 1];
            if (id) {
                if (count > 1)
                    snprintf(sid, sizeof(sid), "%s.%lu", id, k);
                else
                    snprintf(sid, sizeof(sid), "%s", id);
                r.session_id = sid;
            }
            rc = tlsrpt_record_session(s, &r);
            if (rc == 0)
                done++;
            else if (rc != ERR_EXISTS)
                break;
        }
        if (rc != 0 && rc != ERR_EXISTS) {
            printf("error %s\n", err_str(rc));
            status = status ? status : 1;
        } else if (done == 0) {
            printf("exists\n");
        } else {
            printf("recorded %lu\n", done);
        }
    }
    tlsrpt_store_close(s);
    return status;
}
