/*
 * control_queue.c - the control socket's operator commands: queue actions
 * on messages named by ID, and pausing delivery. The protocol of each is
 * documented in control.c's header. Filters are applied by convoyctl
 * (qfilter.c, the same code as `queue list`), which sends the IDs they
 * selected, so listing and acting select exactly alike.
 *
 * Requests on many IDs are issued to the queue at most ACTION_WINDOW at a
 * time (BOUNCE_WINDOW for bounces, which each read a whole message), so one
 * command never floods the writer or memory; the answer comes when every
 * one has called back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery.h"
#include "mta.h"
#include "queue.h"

#define ACTION_WINDOW 256
#define BOUNCE_WINDOW 4
#define ACTION_IDS_MAX 100000

enum action { A_RETRY, A_HOLD, A_RELEASE, A_DELETE, A_BOUNCE };

struct action_ctx {
    struct mta *m;
    struct control_req *req;
    enum action act;
    char reason[512];
    char (*ids)[QUEUE_ID_LEN + 1];
    size_t n, next, inflight;
    size_t done, rcpts;
    json_t *missing, *skipped, *failed;
};

struct action_one {
    struct action_ctx *x;
    size_t i;
};

static void action_pump(struct action_ctx *x);

static void action_result(struct action_ctx *x, size_t i, int status, size_t rcpts)
{
    if (status == 0) {
        x->done++;
        x->rcpts += rcpts;
    } else if (status == ERR_NOTFOUND) {
        json_array_append_new(x->missing, json_string(x->ids[i]));
    } else if (status == ERR_AGAIN && x->act == A_BOUNCE) {
        json_array_append_new(x->skipped, json_string(x->ids[i]));
    } else {
        json_array_append_new(x->failed,
                              json_pack("{s:s, s:s}", "id", x->ids[i], "error", err_str(status)));
    }
}

static void on_queue_done(void *arg, int status)
{
    struct action_one *o = arg;
    struct action_ctx *x = o->x;
    action_result(x, o->i, status, 0);
    free(o);
    x->inflight--;
    action_pump(x);
}

static void on_bounce_done(void *arg, int status, size_t n)
{
    struct action_one *o = arg;
    struct action_ctx *x = o->x;
    action_result(x, o->i, status, n);
    free(o);
    x->inflight--;
    action_pump(x);
}

static void action_finish(struct action_ctx *x)
{
    json_t *r = json_object();
    json_object_set_new(r, CTL_F_DONE, json_integer((json_int_t)x->done));
    if (x->act == A_BOUNCE)
        json_object_set_new(r, CTL_F_RECIPIENTS, json_integer((json_int_t)x->rcpts));
    json_object_set_new(r, CTL_F_MISSING, x->missing);
    json_object_set_new(r, CTL_F_SKIPPED, x->skipped);
    json_object_set_new(r, CTL_F_FAILED, x->failed);
    control_reply(x->req, r);
    free(x->ids);
    free(x);
}

static void action_pump(struct action_ctx *x)
{
    size_t window = x->act == A_BOUNCE ? BOUNCE_WINDOW : ACTION_WINDOW;
    while (x->next < x->n && x->inflight < window) {
        size_t i = x->next++;
        struct action_one *o = calloc(1, sizeof(*o));
        if (!o) {
            action_result(x, i, ERR_NOMEM, 0);
            continue;
        }
        o->x = x;
        o->i = i;
        int rc;
        struct queue *q = x->m->queue;
        switch (x->act) {
        case A_RETRY:
            rc = queue_retry(q, x->ids[i], on_queue_done, o);
            break;
        case A_HOLD:
            rc = queue_hold(q, x->ids[i], on_queue_done, o);
            break;
        case A_RELEASE:
            rc = queue_release(q, x->ids[i], on_queue_done, o);
            break;
        case A_DELETE:
            rc = queue_remove(q, x->ids[i], on_queue_done, o);
            break;
        default:
            rc = delivery_admin_bounce(x->m->delivery, x->ids[i], x->reason, on_bounce_done, o);
            break;
        }
        if (rc != 0) {
            free(o);
            action_result(x, i, rc, 0);
            continue;
        }
        x->inflight++;
    }
    if (x->next == x->n && x->inflight == 0)
        action_finish(x);
}

static void handle_action(struct mta *m, struct control_req *req, json_t *request, enum action act)
{
    json_t *ids = json_object_get(request, CTL_F_IDS);
    if (!json_is_array(ids)) {
        control_reply_error(req, "\"ids\" must be an array of queue IDs");
        return;
    }
    size_t n = json_array_size(ids);
    if (n > ACTION_IDS_MAX) {
        control_reply_error(req, "at most %d IDs per request", ACTION_IDS_MAX);
        return;
    }
    if (!m->queue || m->stopping) {
        control_reply_error(req, "convoyd is stopping");
        return;
    }
    struct action_ctx *x = calloc(1, sizeof(*x));
    if (!x || !(x->ids = calloc(n ? n : 1, sizeof(*x->ids)))) {
        free(x);
        control_reply_error(req, "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_array_get(ids, i));
        if (!id || !queue_id_valid(id)) {
            free(x->ids);
            free(x);
            control_reply_error(req, "not a queue ID: %.40s", id ? id : "(not a string)");
            return;
        }
        str_copy(x->ids[i], id, sizeof(x->ids[i]));
    }
    const char *reason = json_string_value(json_object_get(request, CTL_F_REASON));
    str_copy(x->reason, reason ? reason : "", sizeof(x->reason));
    x->m = m;
    x->req = req;
    x->act = act;
    x->n = n;
    x->missing = json_array();
    x->skipped = json_array();
    x->failed = json_array();
    action_pump(x);
}

static void handle_retry(struct mta *m, struct control_req *req, json_t *request)
{
    handle_action(m, req, request, A_RETRY);
}

static void handle_hold(struct mta *m, struct control_req *req, json_t *request)
{
    handle_action(m, req, request, A_HOLD);
}

static void handle_release(struct mta *m, struct control_req *req, json_t *request)
{
    handle_action(m, req, request, A_RELEASE);
}

static void handle_delete(struct mta *m, struct control_req *req, json_t *request)
{
    handle_action(m, req, request, A_DELETE);
}

static void handle_bounce(struct mta *m, struct control_req *req, json_t *request)
{
    handle_action(m, req, request, A_BOUNCE);
}

/* A pause or resume is answered once the table is on disk. */
struct pause_answer {
    struct control_req *req;
    json_t *response;
    bool resume;
    size_t resumed; /* resume: how many pauses ended */
};

static void on_pause_saved(void *arg, int status, const char *why)
{
    struct pause_answer *a = arg;
    if (a->resume)
        json_object_set_new(a->response, CTL_F_RESUMED, json_integer((json_int_t)a->resumed));
    json_object_set_new(a->response, CTL_F_SAVED, json_boolean(status == 0));
    if (status != 0) {
        char text[512];
        snprintf(text, sizeof(text),
                 "the change is in force but was not saved (%.400s): it will not survive a "
                 "restart of convoyd",
                 why ? why : err_str(status));
        json_object_set_new(a->response, CTL_F_WARNING, json_string(text));
    }
    control_reply(a->req, a->response);
    free(a);
}

static struct pause_answer *pause_answer_new(struct control_req *req, json_t *response)
{
    struct pause_answer *a = calloc(1, sizeof(*a));
    if (!a) {
        json_decref(response);
        control_reply_error(req, "out of memory");
        return NULL;
    }
    a->req = req;
    a->response = response;
    return a;
}

static void handle_pause(struct mta *m, struct control_req *req, json_t *request)
{
    json_t *jd = json_object_get(request, CTL_F_DOMAIN);
    json_t *jf = json_object_get(request, CTL_F_FOR);
    const char *domain = json_string_value(jd);
    const char *reason = json_string_value(json_object_get(request, CTL_F_REASON));
    if ((jd && !json_is_null(jd) && !domain) || (jf && !json_is_null(jf) && !json_is_integer(jf))) {
        control_reply_error(req, "\"domain\" must be a string and \"for\" whole seconds");
        return;
    }
    if (!reason || !reason[0]) {
        control_reply_error(req, "a reason is required");
        return;
    }
    if (domain && domain[0] && !delivery_pause_domain_ok(domain)) {
        control_reply_error(req, "not a domain: \"%.100s\"", domain);
        return;
    }
    if (m->stopping) {
        control_reply_error(req, "convoyd is stopping");
        return;
    }
    int64_t secs = jf && json_is_integer(jf) ? (int64_t)json_integer_value(jf) : 0;
    if (secs < 0 || secs > 400LL * 86400) {
        control_reply_error(req, "\"for\" out of range");
        return;
    }
    int64_t until = secs ? time_now_ms() + secs * 1000 : 0;
    json_t *r = json_object();
    json_object_set_new(r, CTL_F_DOMAIN, domain && domain[0] ? json_string(domain) : json_null());
    json_object_set_new(r, CTL_F_UNTIL,
                        until ? json_integer((json_int_t)(until / 1000)) : json_null());
    struct pause_answer *a = pause_answer_new(req, r);
    if (!a)
        return;
    int rc = delivery_pause(m->delivery, domain, until, reason, on_pause_saved, a);
    if (rc != 0) {
        json_decref(r);
        free(a);
        control_reply_error(req, "cannot pause: %s", err_str(rc));
    }
}

static void handle_resume(struct mta *m, struct control_req *req, json_t *request)
{
    json_t *jd = json_object_get(request, CTL_F_DOMAIN);
    const char *domain = json_string_value(jd);
    if (jd && !json_is_null(jd) && !domain) {
        control_reply_error(req, "\"domain\" must be a string");
        return;
    }
    if (m->stopping) {
        control_reply_error(req, "convoyd is stopping");
        return;
    }
    json_t *r = json_object();
    struct pause_answer *a = pause_answer_new(req, r);
    if (!a)
        return;
    a->resume = true;
    int rc = delivery_resume(m->delivery, domain && domain[0] ? domain : NULL, &a->resumed,
                             on_pause_saved, a);
    if (rc != 0) {
        json_decref(r);
        free(a);
        control_reply_error(req, "cannot resume: %s", err_str(rc));
    }
}

static void pause_status_hook(struct mta *m, json_t *status)
{
    delivery_pause_status(m->delivery, status);
}

void control_queue_register(void)
{
    control_register(CTL_CMD_QUEUE_RETRY, handle_retry);
    control_register(CTL_CMD_QUEUE_HOLD, handle_hold);
    control_register(CTL_CMD_QUEUE_RELEASE, handle_release);
    control_register(CTL_CMD_QUEUE_DELETE, handle_delete);
    control_register(CTL_CMD_QUEUE_BOUNCE, handle_bounce);
    control_register(CTL_CMD_PAUSE, handle_pause);
    control_register(CTL_CMD_RESUME, handle_resume);
    control_add_status_hook(pause_status_hook);
}
