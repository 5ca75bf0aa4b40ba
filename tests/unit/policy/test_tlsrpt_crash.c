/*
 * test_tlsrpt_crash.c - kill -9 the TLS-RPT store's writer at random
 * moments.
 *
 * Each round a child process opens the store and records sessions as fast
 * as it can, each with its own session id ("R.N"); session N is a success
 * unless N % 3 == 0 (then a certificate-expired failure on one of four MX
 * addresses). After each tlsrpt_record_session() returns 0 the child writes
 * N to a pipe: from then on that session must be counted. The parent
 * SIGKILLs the child after a random delay, reopens the store and checks:
 *  - every reported session is counted, and at most one more (the one
 *    whose commit raced the kill): never a session twice, never half a
 *    session (the policy's failure count equals the sum of its rows);
 *  - recording every id of the round again changes nothing (each is
 *    ERR_EXISTS) except for that one unreported session, which is now
 *    counted exactly once.
 * Exit status 0 means all good.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "policy.h"

#define ROUNDS 25
#define DAY "2026-03-01"
#define T0 (1772323200 + 3600) /* 2026-03-01 01:00 UTC */

static char g_path[128];

static struct tlsrpt_session_result session(unsigned round, uint32_t n, char *id, size_t idsize)
{
    static const char *const ips[] = {"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"};
    snprintf(id, idsize, "%u.%u", round, n);
    struct tlsrpt_session_result r = {
        .policy_domain = "crash.example",
        .time = T0,
        .session_id = id,
        .policy_type = TLSRPT_POLICY_NO_POLICY,
        .result = n % 3 == 0 ? TLSRPT_CERTIFICATE_EXPIRED : TLSRPT_SUCCESS,
        .sending_mta_ip = "198.51.100.1",
        .receiving_mx_hostname = "mx.crash.example",
        .receiving_ip = ips[n % 4],
    };
    return r;
}

static void child(unsigned round, int fd)
{
    struct tlsrpt_store *s;
    char why[256];
    if (tlsrpt_store_open(g_path, false, &s, why, sizeof(why)) != 0) {
        fprintf(stderr, "child: open: %s\n", why);
        _exit(2);
    }
    for (uint32_t n = 0;; n++) {
        char id[64];
        struct tlsrpt_session_result r = session(round, n, id, sizeof(id));
        int rc = tlsrpt_record_session(s, &r);
        if (rc != 0) {
            fprintf(stderr, "child: record %s: %s\n", id, err_str(rc));
            _exit(3);
        }
        if (write(fd, &n, sizeof(n)) != (ssize_t)sizeof(n))
            _exit(4);
    }
}

/* Totals of the one record: successes, failures, and the sum of the rows. */
static int totals(uint64_t *ok, uint64_t *fail, uint64_t *rows)
{
    struct tlsrpt_store *s;
    char why[256];
    if (tlsrpt_store_open(g_path, true, &s, why, sizeof(why)) != 0) {
        fprintf(stderr, "reopen: %s\n", why);
        return -1;
    }
    struct tlsrpt_report_info info = {"Org", "a@b.example", "b.example", NULL};
    struct buf out;
    buf_init(&out, 1 << 22);
    int rc = tlsrpt_report_json(s, DAY, "crash.example", &info, 0, 0, false, &out);
    tlsrpt_store_close(s);
    *ok = *fail = *rows = 0;
    if (rc == ERR_NOTFOUND) {
        buf_free(&out);
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "report: %s\n", err_str(rc));
        buf_free(&out);
        return -1;
    }
    json_error_t e;
    json_t *j = json_loadb(out.data, out.len, 0, &e);
    buf_free(&out);
    json_t *p = json_array_get(json_object_get(j, "policies"), 0);
    json_t *sum = json_object_get(p, "summary");
    *ok = (uint64_t)json_integer_value(json_object_get(sum, "total-successful-session-count"));
    *fail = (uint64_t)json_integer_value(json_object_get(sum, "total-failure-session-count"));
    size_t i;
    json_t *d;
    json_array_foreach(json_object_get(p, "failure-details"), i, d)
    {
        *rows += (uint64_t)json_integer_value(json_object_get(d, "failed-session-count"));
    }
    json_decref(j);
    return 0;
}

static void expect(uint32_t count, uint64_t *ok, uint64_t *fail)
{
    /* Sessions 0..count-1: n % 3 == 0 are failures. */
    uint64_t f = count == 0 ? 0 : (count - 1) / 3 + 1;
    *fail = f;
    *ok = count - f;
}

int main(void)
{
    char dir[64] = "/tmp/convoy-tlsrpt-crash-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    snprintf(g_path, sizeof(g_path), "%s/%s", dir, TLSRPT_STORE_FILE);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    uint64_t base_ok = 0, base_fail = 0;
    int status = 0;
    for (unsigned round = 0; round < ROUNDS && status == 0; round++) {
        int fds[2];
        if (pipe(fds) != 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(fds[0]);
            child(round, fds[1]);
        }
        close(fds[1]);
        /* Wait for the first session, so the kill lands among commits and
         * not during the child's start. */
        uint32_t n, reported = 0;
        if (read(fds[0], &n, sizeof(n)) == (ssize_t)sizeof(n))
            reported = n + 1;
        struct timespec ts = {0, (long)(rand() % 40 + 1) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int ws;
        waitpid(pid, &ws, 0);
        while (read(fds[0], &n, sizeof(n)) == (ssize_t)sizeof(n))
            reported = n + 1;
        close(fds[0]);
        if (WIFEXITED(ws)) {
            fprintf(stderr, "round %u: child exited %d\n", round, WEXITSTATUS(ws));
            status = 1;
            break;
        }

        uint64_t ok, fail, rows, eok, efail, eok1, efail1;
        if (totals(&ok, &fail, &rows) != 0) {
            status = 1;
            break;
        }
        expect(reported, &eok, &efail);
        expect(reported + 1, &eok1, &efail1);
        eok += base_ok, efail += base_fail, eok1 += base_ok, efail1 += base_fail;
        bool exact = ok == eok && fail == efail;
        bool one_more = ok == eok1 && fail == efail1;
        if ((!exact && !one_more) || rows != fail) {
            fprintf(stderr,
                    "round %u: %u reported; counted ok=%llu fail=%llu rows=%llu, expected "
                    "ok=%llu fail=%llu (or ok=%llu fail=%llu)\n",
                    round, reported, (unsigned long long)ok, (unsigned long long)fail,
                    (unsigned long long)rows, (unsigned long long)eok, (unsigned long long)efail,
                    (unsigned long long)eok1, (unsigned long long)efail1);
            status = 1;
            break;
        }

        /* Replay every id of the round and the one after: only an
         * uncounted one may count, once. */
        struct tlsrpt_store *s;
        char why[256];
        if (tlsrpt_store_open(g_path, false, &s, why, sizeof(why)) != 0) {
            fprintf(stderr, "round %u: reopen rw: %s\n", round, why);
            status = 1;
            break;
        }
        unsigned fresh = 0;
        for (uint32_t k = 0; k <= reported; k++) {
            char id[64];
            struct tlsrpt_session_result r = session(round, k, id, sizeof(id));
            int rc = tlsrpt_record_session(s, &r);
            if (rc == 0)
                fresh++;
            else if (rc != ERR_EXISTS) {
                fprintf(stderr, "round %u: replay %s: %s\n", round, id, err_str(rc));
                status = 1;
            }
            if (k < reported && rc == 0) {
                fprintf(stderr, "round %u: reported session %s counted again\n", round, id);
                status = 1;
            }
        }
        tlsrpt_store_close(s);
        if (exact && fresh != 1) {
            fprintf(stderr, "round %u: session %u not counted on replay\n", round, reported);
            status = 1;
        }
        if (one_more && fresh != 0) {
            fprintf(stderr, "round %u: session %u counted twice\n", round, reported);
            status = 1;
        }
        if (totals(&ok, &fail, &rows) != 0 || ok != eok1 || fail != efail1 || rows != fail) {
            fprintf(stderr, "round %u: after replay ok=%llu fail=%llu, expected %llu %llu\n", round,
                    (unsigned long long)ok, (unsigned long long)fail, (unsigned long long)eok1,
                    (unsigned long long)efail1);
            status = 1;
        }
        base_ok = eok1;
        base_fail = efail1;
        printf("round %u: %u sessions reported, %s\n", round, reported,
               exact ? "all counted" : "one more counted (commit raced the kill)");
    }
    char p[160];
    unlink(g_path);
    snprintf(p, sizeof(p), "%s-lock", g_path);
    unlink(p);
    rmdir(dir);
    return status;
}
