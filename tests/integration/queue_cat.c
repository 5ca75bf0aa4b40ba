/*
 * queue_cat.c - a test helper: print the body of one queued message, read
 * through the queue's public read API (queue_open read-only, queue_body_read),
 * so integration tests can check that what a client sent is what was stored.
 *
 * usage: queue_cat QUEUE_DIRECTORY QUEUE_ID   (body bytes on standard output)
 */
#include <stdio.h>

#include "queue.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: queue_cat QUEUE_DIRECTORY QUEUE_ID\n");
        return 2;
    }
    struct queue_options o;
    queue_options_default(&o);
    o.directory = argv[1];
    o.read_only = true;
    struct queue *q;
    struct buf why;
    buf_init(&why, 1024);
    int rc = queue_open(NULL, &o, &q, &why);
    if (rc) {
        fprintf(stderr, "queue_cat: %s\n", why.len ? why.data : err_str(rc));
        return 1;
    }
    char chunk[65536];
    uint64_t off = 0;
    for (;;) {
        size_t got = 0;
        rc = queue_body_read(q, argv[2], off, chunk, sizeof(chunk), &got);
        if (rc || got == 0)
            break;
        fwrite(chunk, 1, got, stdout);
        off += got;
    }
    queue_close(q);
    buf_free(&why);
    if (rc) {
        fprintf(stderr, "queue_cat: %s: %s\n", argv[2], err_str(rc));
        return 1;
    }
    return fflush(stdout) == 0 ? 0 : 1;
}
