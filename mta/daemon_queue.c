/*
 * daemon_queue.c - the daemon's queue: opened from the configuration before
 * the services start, closed after they stop; its totals in `status`.
 */
#include "mta.h"
#include "queue.h"

static void new_work(void *arg)
{
    struct mta *m = arg;
    if (m->on_new_work)
        m->on_new_work(m);
}

static void queue_status_hook(struct mta *m, json_t *status)
{
    struct queue_stats st;
    if (!m->queue || queue_stats(m->queue, &st) != 0)
        return;
    json_t *q = json_object();
    json_object_set_new(q, "messages", json_integer((json_int_t)st.messages));
    for (int s = 0; s <= QUEUE_RCPT_BOUNCED; s++)
        json_object_set_new(q, queue_rcpt_state_name(s), json_integer((json_int_t)st.rcpts[s]));
    json_object_set_new(q, "map_size", json_integer((json_int_t)st.map_size));
    json_object_set_new(q, "map_used", json_integer((json_int_t)st.map_used));
    json_object_set_new(status, "queue", q);
}

int mta_queue_open(struct mta *m, struct buf *err)
{
    struct queue_options o;
    settings_queue_options(m->conf, &o);
    o.on_new_work = new_work;
    o.on_new_work_arg = m;
    int rc = queue_open(m->loop, &o, &m->queue, err);
    if (rc != 0) {
        if (!err->len)
            buf_printf(err, "cannot open the queue in %s: %s", o.directory, err_str(rc));
        m->queue = NULL;
        return rc;
    }
    control_add_status_hook(queue_status_hook);
    return 0;
}

void mta_queue_close(struct mta *m)
{
    queue_close(m->queue);
    m->queue = NULL;
}
