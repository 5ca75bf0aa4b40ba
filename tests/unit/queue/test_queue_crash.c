/*
 * test_queue_crash.c - kill -9 at random moments.
 *
 * Each round a child process opens the queue and submits messages as fast
 * as it can (8 in flight, bodies of 0 bytes to 300 KiB, so several chunks),
 * and leases some recipients now and then. Every time a submit callback
 * fires, the child writes "ID SEED SIZE" to a pipe: from then on the message
 * must survive anything. The parent SIGKILLs the child after a random
 * delay, reopens the queue and checks that:
 *  - every reported message is there, with its envelope, recipients and
 *    the exact body (regenerated from SEED);
 *  - every message in the queue is complete (nothing half-written);
 *  - no recipient is left ACTIVE (leases of the dead process are due).
 * It then removes about half of the messages so the queue does not grow
 * without bound, and starts the next round. Exit status 0 means all good.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "queue.h"

#define ROUNDS 30
#define INFLIGHT 8

static void gen(unsigned char *p, size_t n, uint32_t seed)
{
    uint32_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (unsigned char)x;
    }
}

static size_t size_of(uint32_t seed)
{
    uint32_t r = seed % 100;
    if (r < 10)
        return 0;
    if (r < 80)
        return seed % 4000;
    return seed % (300 * 1024);
}

/* ---- the child -------------------------------------------------------------- */

struct child {
    uv_loop_t loop;
    struct queue *q;
    int fd;
    uint32_t rng;
    unsigned done;
};

struct sub {
    struct child *c;
    unsigned char *body;
    uint32_t seed;
    size_t size;
    char envid[32];
};

static uint32_t child_rand(struct child *c)
{
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 17;
    c->rng ^= c->rng << 5;
    return c->rng;
}

static void child_submit(struct child *c, struct sub *s);

static void on_lease(void *arg, int status, struct queue_due *due, size_t n)
{
    (void)arg;
    (void)status;
    (void)n;
    queue_due_free(due);
}

static void on_submitted(void *arg, int status, const char *id)
{
    struct sub *s = arg;
    struct child *c = s->c;
    if (status != 0) {
        fprintf(stderr, "child: submit failed: %s\n", err_str(status));
        _exit(3);
    }
    char line[96];
    int n = snprintf(line, sizeof(line), "%s %u %zu\n", id, s->seed, s->size);
    if (write(c->fd, line, (size_t)n) != n)
        _exit(4);
    if (++c->done % 10 == 0)
        queue_lease(c->q, 5, on_lease, NULL);
    child_submit(c, s);
}

static void child_submit(struct child *c, struct sub *s)
{
    free(s->body);
    s->seed = child_rand(c);
    s->size = size_of(s->seed);
    s->body = malloc(s->size ? s->size : 1);
    if (!s->body)
        _exit(5);
    gen(s->body, s->size, s->seed);
    snprintf(s->envid, sizeof(s->envid), "seed-%u", s->seed);
    struct queue_rcpt_in rcpts[3] = {
        {"one@example.org", NULL, 0}, {"two@example.net", NULL, 0}, {"three@example.com", NULL, 0}};
    struct queue_envelope env = {.sender = "crash@example.com", .envid = s->envid};
    if (queue_submit(c->q, &env, rcpts, 1 + s->seed % 3, s->body, s->size, on_submitted, s) != 0)
        _exit(6);
}

static void child_main(const char *dir, int fd, uint32_t seed)
{
    struct child c = {.fd = fd, .rng = seed | 1};
    uv_loop_init(&c.loop);
    struct queue_options o;
    queue_options_default(&o);
    o.directory = dir;
    o.initial_map_size = 1 << 20; /* grow under fire too */
    struct buf why;
    buf_init(&why, 512);
    if (queue_open(&c.loop, &o, &c.q, &why) != 0) {
        fprintf(stderr, "child: %s\n", why.data);
        _exit(2);
    }
    struct sub subs[INFLIGHT] = {0};
    for (int i = 0; i < INFLIGHT; i++) {
        subs[i].c = &c;
        child_submit(&c, &subs[i]);
    }
    uv_run(&c.loop, UV_RUN_DEFAULT);
    _exit(7);
}

/* ---- the parent --------------------------------------------------------- */

static int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Check one message fully; returns 0 if it is whole. */
static int verify(struct queue *q, const struct queue_message *m, uint32_t want_seed, bool known)
{
    uint32_t seed;
    if (sscanf(m->env.envid, "seed-%u", &seed) != 1) {
        CHECK(0, "%s: envid %s", m->id, m->env.envid);
        return -1;
    }
    if (known && seed != want_seed) {
        CHECK(0, "%s: seed %u, reported %u", m->id, seed, want_seed);
        return -1;
    }
    size_t size = size_of(seed);
    CHECK(m->env.size == size, "%s: size %llu want %zu", m->id, (unsigned long long)m->env.size,
          size);
    CHECK(m->n_rcpts == 1 + seed % 3, "%s: %zu recipients", m->id, m->n_rcpts);
    CHECK(strcmp(m->env.sender, "crash@example.com") == 0, "%s: sender", m->id);
    for (size_t i = 0; i < m->n_rcpts; i++)
        CHECK(m->rcpts[i].state != QUEUE_RCPT_ACTIVE, "%s: recipient %zu still active", m->id, i);
    unsigned char *want = malloc(size + 1), *got = malloc(size + 1);
    gen(want, size, seed);
    size_t n = 0;
    int rc = queue_body_read(q, m->id, 0, got, size + 1, &n);
    CHECK(rc == 0 && n == size && memcmp(want, got, size) == 0, "%s: body differs (rc %d, %zu)",
          m->id, rc, n);
    free(want);
    free(got);
    return 0;
}

struct ids {
    char (*v)[QUEUE_ID_LEN + 1];
    size_t n, cap;
};

static int collect_ids(void *arg, const struct queue_message *m)
{
    struct ids *ids = arg;
    if (ids->n < ids->cap)
        memcpy(ids->v[ids->n++], m->id, QUEUE_ID_LEN + 1);
    return 0;
}

struct walk {
    struct queue *q;
    size_t n;
};

static int verify_all(void *arg, const struct queue_message *m)
{
    struct walk *w = arg;
    verify(w->q, m, 0, false);
    w->n++;
    return 0;
}

static void on_removed(void *arg, int status)
{
    (void)status;
    (*(int *)arg)--;
}

int main(void)
{
    char dir[64];
    str_copy(dir, "/tmp/convoy-qcrash-XXXXXX", sizeof(dir));
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    size_t total_reported = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int p[2];
        if (pipe(p) != 0)
            return 1;
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            child_main(dir, p[1], (uint32_t)rand());
        }
        close(p[1]);
        /* Let it open and get going, then kill it at a random moment. */
        usleep((useconds_t)(30000 + rand() % 250000));
        kill(pid, SIGKILL);
        int st;
        waitpid(pid, &st, 0);
        if (!WIFSIGNALED(st)) {
            fprintf(stderr, "child exited by itself (status %d)\n", WEXITSTATUS(st));
            return 1;
        }
        /* Read what the child reported. */
        char *data = NULL;
        size_t len = 0, cap = 0;
        for (;;) {
            if (cap - len < 4096) {
                cap = cap ? cap * 2 : 65536;
                data = realloc(data, cap);
            }
            ssize_t n = read(p[0], data + len, cap - len - 1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            len += (size_t)n;
        }
        close(p[0]);
        data = realloc(data, len + 1);
        data[len] = 0;

        uv_loop_t loop;
        uv_loop_init(&loop);
        struct queue_options o;
        queue_options_default(&o);
        o.directory = dir;
        struct queue *q;
        struct buf why;
        buf_init(&why, 512);
        int orc = queue_open(&loop, &o, &q, &why);
        if (orc != 0) {
            fprintf(stderr, "round %d: reopen failed: %s (%s)\n", round,
                    why.len ? why.data : "no reason given", err_str(orc));
            return 1;
        }
        buf_free(&why);
        size_t reported = 0;
        char *save = NULL;
        for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char id[QUEUE_ID_LEN + 1];
            unsigned seed;
            size_t size;
            if (sscanf(line, "%16s %u %zu", id, &seed, &size) != 3) {
                CHECK(0, "round %d: bad line %s", round, line);
                continue;
            }
            struct queue_message *m;
            int rc = queue_message_read(q, id, &m);
            CHECK(rc == 0, "round %d: reported %s is missing (%s)", round, id, err_str(rc));
            if (rc == 0) {
                verify(q, m, seed, true);
                queue_message_free(m);
            }
            reported++;
        }
        free(data);
        total_reported += reported;
        struct walk w = {q, 0};
        int rc = queue_list(q, NULL, verify_all, &w);
        CHECK(rc == 0, "round %d: list: %s", round, err_str(rc));
        struct queue_stats qs;
        queue_stats(q, &qs);
        CHECK(qs.rcpts[QUEUE_RCPT_ACTIVE] == 0, "round %d: active recipients after restart", round);
        printf("round %2d: %4zu acknowledged, %5zu messages in queue, map %llu MiB\n", round,
               reported, w.n, (unsigned long long)(qs.map_size >> 20));

        /* Remove every other message to keep the queue small. */
        struct ids ids = {calloc(w.n + 1, sizeof(*ids.v)), 0, w.n + 1};
        queue_list(q, NULL, collect_ids, &ids);
        int pending = 0;
        for (size_t i = 0; i < ids.n; i += 2)
            if (queue_remove(q, ids.v[i], on_removed, &pending) == 0)
                pending++;
        while (pending > 0)
            uv_run(&loop, UV_RUN_ONCE);
        free(ids.v);
        queue_close(q);
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
        if (failures)
            break;
    }
    printf("%zu acknowledged messages checked over %d kills, %d failures\n", total_reported, ROUNDS,
           failures);
    char path[128];
    snprintf(path, sizeof(path), "%s/queue.lmdb", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/queue.lmdb-lock", dir);
    unlink(path);
    rmdir(dir);
    return failures ? 1 : 0;
}
