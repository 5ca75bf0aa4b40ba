/*
 * bench_queue.c - durable submissions per second, and memory for a large
 * queue. A benchmark, not a test: it prints a Markdown table.
 *
 * Method: for each body size (1, 10, 100 KiB) and each number of
 * concurrent submitters (1, 16, 128) a fresh queue is opened in a new
 * directory. A submitter has one submission outstanding at a time and
 * submits the next one from its callback, which the queue calls only after
 * the commit holding the message has been synced (LMDB's default sync mode:
 * fdatasync of the data, then of the meta page, before mdb_txn_commit()
 * returns). Each case runs for a fixed wall-clock time; the rate is
 * completed callbacks divided by the elapsed time. The last part fills one
 * queue with 100,000 messages of 1 KiB (128 submitters) and reports the
 * process's peak resident set (getrusage ru_maxrss; pages of the LMDB map
 * that were touched count as resident) and the bytes the map uses.
 *
 * Each case runs REPEAT times (default 3) and the median rate is shown with
 * the lowest and highest, because the rate follows the disk's sync latency,
 * which on a shared machine varies from run to run.
 *
 * usage: bench_queue [-d DIR] [-t SECONDS_PER_RUN] [-r REPEAT] [-n MESSAGES]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "queue.h"

struct bench {
    uv_loop_t *loop;
    struct queue *q;
    const char *body;
    size_t len;
    int64_t deadline_ms; /* monotonic; 0: use limit */
    uint64_t limit;      /* stop after this many started submissions */
    uint64_t started, done, failed;
};

static void on_done(void *arg, int status, const char *id);

static void submit_one(struct bench *b)
{
    static const struct queue_rcpt_in rcpt = {"rcpt@example.org", NULL, 0};
    static const struct queue_envelope env = {.sender = "bench@example.com",
                                              .client_name = "localhost",
                                              .client_addr = "127.0.0.1",
                                              .helo = "bench"};
    if (b->deadline_ms ? time_mono_ms() >= b->deadline_ms : b->started >= b->limit)
        return;
    if (queue_submit(b->q, &env, &rcpt, 1, b->body, b->len, on_done, b) == 0)
        b->started++;
    else
        b->failed++;
}

static void on_done(void *arg, int status, const char *id)
{
    struct bench *b = arg;
    (void)id;
    if (status)
        b->failed++;
    else
        b->done++;
    submit_one(b);
}

#define MAX_REPEAT 15

static int parse_repeat(const char *s)
{
    long v = strtol(s, NULL, 10);
    return v < 1 ? 1 : v > MAX_REPEAT ? MAX_REPEAT : (int)v;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A "Name: N kB" line of /proc/self/status, or -1. */
static long proc_status_kb(const char *name)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(name);
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, name, n) == 0)
            v = strtol(line + n, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static void rm_queue(const char *dir)
{
    char p[4400];
    snprintf(p, sizeof(p), "%s/queue.lmdb", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/queue.lmdb-lock", dir);
    unlink(p);
    rmdir(dir);
}

static int open_fresh(const char *base, char *dir, size_t size, uv_loop_t *loop, struct queue **q)
{
    snprintf(dir, size, "%s/convoy-bench-XXXXXX", base);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return -1;
    }
    struct queue_options o;
    queue_options_default(&o);
    o.directory = dir;
    struct buf why;
    buf_init(&why, 512);
    int rc = queue_open(loop, &o, q, &why);
    if (rc)
        fprintf(stderr, "bench: %s\n", why.data);
    buf_free(&why);
    return rc;
}

static void run(struct bench *b, unsigned submitters)
{
    for (unsigned i = 0; i < submitters; i++)
        submit_one(b);
    while (b->done + b->failed < b->started)
        uv_run(b->loop, UV_RUN_ONCE);
}

int main(int argc, char **argv)
{
    const char *base = "/tmp";
    double secs = 4;
    unsigned long n_rss = 100000;
    int repeat = 3;
    int c;
    while ((c = getopt(argc, argv, "d:t:n:r:")) != -1) {
        switch (c) {
        case 'd':
            base = optarg;
            break;
        case 't':
            secs = strtod(optarg, NULL);
            break;
        case 'n':
            n_rss = strtoul(optarg, NULL, 10);
            break;
        case 'r':
            repeat = parse_repeat(optarg);
            break;
        default:
            fprintf(stderr, "usage: bench_queue [-d DIR] [-t SECONDS] [-r REPEAT] [-n MESSAGES]\n");
            return 2;
        }
    }
    log_setup("bench", "mail", LOG_TO_STDERR, false);
    static const size_t sizes[] = {1024, 10 * 1024, 100 * 1024};
    static const unsigned conc[] = {1, 16, 128};
    char *body = malloc(100 * 1024);
    if (!body)
        return 1;
    for (size_t i = 0; i < 100 * 1024; i++)
        body[i] = (char)('a' + i % 26);
    uv_loop_t loop;
    uv_loop_init(&loop);

    printf("| body | submitters | durable submits/s (median) | min .. max | MB/s | msgs per "
           "commit |\n");
    printf("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        for (size_t k = 0; k < sizeof(conc) / sizeof(conc[0]); k++) {
            double rate[MAX_REPEAT], per_commit = 0;
            uint64_t failed = 0;
            for (int rep = 0; rep < repeat; rep++) {
                char dir[4200];
                struct queue *q;
                if (open_fresh(base, dir, sizeof(dir), &loop, &q))
                    return 1;
                struct bench b = {.loop = &loop, .q = q, .body = body, .len = sizes[s]};
                int64_t t0 = time_mono_ms();
                b.deadline_ms = t0 + (int64_t)(secs * 1000);
                run(&b, conc[k]);
                double el = (double)(time_mono_ms() - t0) / 1000.0;
                struct queue_stats st;
                queue_stats(q, &st);
                rate[rep] = (double)b.done / el;
                if (st.commits)
                    per_commit += (double)b.done / (double)st.commits / repeat;
                failed += b.failed;
                queue_close(q);
                uv_run(&loop, UV_RUN_DEFAULT);
                rm_queue(dir);
            }
            qsort(rate, (size_t)repeat, sizeof(rate[0]), cmp_double);
            double med = rate[repeat / 2];
            printf("| %zu KiB | %u | %.0f | %.0f .. %.0f | %.1f | %.1f |", sizes[s] / 1024, conc[k],
                   med, rate[0], rate[repeat - 1], med * (double)sizes[s] / 1e6, per_commit);
            if (failed)
                printf(" (%llu failed)", (unsigned long long)failed);
            printf("\n");
            fflush(stdout);
        }
    }

    /* Memory with a large queue, in a child so that its peak is its own. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid > 0) {
        int status;
        waitpid(pid, &status, 0);
        uv_loop_close(&loop);
        free(body);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
    }
    uv_loop_t loop2;
    uv_loop_init(&loop2);
    char dir[4200];
    struct queue *q;
    if (open_fresh(base, dir, sizeof(dir), &loop2, &q))
        return 1;
    struct bench b = {.loop = &loop2, .q = q, .body = body, .len = 1024, .limit = n_rss};
    int64_t t0 = time_mono_ms();
    run(&b, 128);
    double el = (double)(time_mono_ms() - t0) / 1000.0;
    struct queue_stats st;
    queue_stats(q, &st);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long anon = proc_status_kb("RssAnon:"), file = proc_status_kb("RssFile:");
    printf("\n%llu messages of 1 KiB queued in %.1f s (%.0f/s); peak RSS %.1f MiB "
           "(at the end: %.1f MiB anonymous, %.1f MiB file-backed, i.e. the LMDB map); "
           "map %.1f MiB used of %.1f MiB mapped; %llu failed\n",
           (unsigned long long)st.messages, el, (double)b.done / el, (double)ru.ru_maxrss / 1024.0,
           (double)anon / 1024.0, (double)file / 1024.0, (double)st.map_used / 1048576.0,
           (double)st.map_size / 1048576.0, (unsigned long long)b.failed);
    queue_close(q);
    uv_run(&loop2, UV_RUN_DEFAULT);
    rm_queue(dir);
    uv_loop_close(&loop2);
    free(body);
    return 0;
}
