/*
 * daemon_queue.c - the daemon's queue: opened from the configuration before
 * the services start, closed after they stop.
 *
 * Placeholder until queue/ lands: no queue is opened.
 */
#include "mta.h"

int mta_queue_open(struct mta *m, struct buf *err)
{
    (void)err;
    m->queue = NULL;
    return 0;
}

void mta_queue_close(struct mta *m)
{
    m->queue = NULL;
}
