/*
 * server_auth.c - the credentials table for SMTP AUTH and the password check.
 *
 * File format: one "user:hash" a line, hash as crypt(3) writes it
 * (yescrypt "$y$...", SHA-512-crypt "$6$...", bcrypt "$2b$...", ...).
 * Empty lines and lines starting with '#' are ignored. Passwords are never
 * stored in the clear; a line whose hash crypt(3) cannot use is refused at
 * load time, so a typo cannot silently lock a user out (or in).
 *
 * The check runs crypt_rn() (libxcrypt) on the libuv thread pool because a
 * good hash takes tens of milliseconds by design. An unknown user is checked
 * against a dummy hash so the answer takes as long as for a known one.
 *
 * Invariants: the table is immutable after load and reference counted (the
 * count is only touched on the loop thread); a check copies what it needs,
 * so the table may go while a check runs.
 */
#include "server_int.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cred {
    char *user;
    char *hash;
};

struct smtpd_credentials {
    int refs;
    size_t n;
    struct cred *v;
};

/* A valid SHA-512-crypt setting with a fixed salt, for unknown users. */
static const char dummy_hash[] = "$6$rounds=5000$convoydummysalt$";

static void creds_destroy(struct smtpd_credentials *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].user);
        if (c->v[i].hash) {
            memset(c->v[i].hash, 0, strlen(c->v[i].hash));
            free(c->v[i].hash);
        }
    }
    free(c->v);
    free(c);
}

struct smtpd_credentials *smtpd_credentials_load(const char *path, struct buf *err)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        buf_printf(err, "%s: cannot open: %m\n", path);
        return NULL;
    }
    struct smtpd_credentials *c = calloc(1, sizeof(*c));
    if (!c) {
        fclose(f);
        buf_printf(err, "%s: out of memory\n", path);
        return NULL;
    }
    c->refs = 1;
    size_t cap = 0;
    char line[4096];
    unsigned lineno = 0;
    bool bad = false;
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (!cd)
        bad = true;
    bool fatal = bad;
    while (!fatal && fgets(line, sizeof(line), f)) {
        lineno++;
        size_t n = strlen(line);
        if (n == sizeof(line) - 1 && line[n - 1] != '\n') {
            buf_printf(err, "%s:%u: line too long\n", path, lineno);
            bad = fatal = true;
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = '\0';
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0' || *p == '#')
            continue;
        char *colon = strchr(p, ':');
        if (!colon || colon == p || colon[1] == '\0') {
            buf_printf(err, "%s:%u: expected \"user:hash\"\n", path, lineno);
            bad = true;
            continue;
        }
        *colon = '\0';
        const char *hash = colon + 1;
        /* A hash must be one crypt(3) can use: hashing anything with it as
         * the setting must give back a string that starts the same way. */
        char *out = crypt_rn("probe", hash, cd, (int)sizeof(*cd));
        if (hash[0] != '$' || !out || out[0] == '*') {
            buf_printf(err, "%s:%u: user %s: not a crypt(3) hash this system supports\n", path,
                       lineno, p);
            bad = true;
            continue;
        }
        for (size_t i = 0; i < c->n; i++) {
            if (strcmp(c->v[i].user, p) == 0) {
                buf_printf(err, "%s:%u: user %s listed twice\n", path, lineno, p);
                bad = true;
            }
        }
        if (c->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            struct cred *nv = realloc(c->v, ncap * sizeof(*nv));
            if (!nv) {
                bad = fatal = true;
                break;
            }
            c->v = nv;
            cap = ncap;
        }
        c->v[c->n].user = strdup(p);
        c->v[c->n].hash = strdup(hash);
        c->n++;
        if (!c->v[c->n - 1].user || !c->v[c->n - 1].hash) {
            buf_printf(err, "%s: out of memory\n", path);
            bad = fatal = true;
        }
    }
    memset(line, 0, sizeof(line));
    free(cd);
    fclose(f);
    if (bad) {
        creds_destroy(c);
        return NULL;
    }
    return c;
}

struct smtpd_credentials *smtpd_credentials_ref(struct smtpd_credentials *c)
{
    if (c)
        c->refs++;
    return c;
}

void smtpd_credentials_free(struct smtpd_credentials *c)
{
    if (c && --c->refs == 0)
        creds_destroy(c);
}

size_t smtpd_credentials_count(const struct smtpd_credentials *c)
{
    return c ? c->n : 0;
}

/* ---- the check on the thread pool ---------------------------------------- */

struct auth_work {
    uv_work_t req;
    char *hash;
    char *password;
    bool known;
    bool ok;
    smtpd_auth_cb cb;
    void *arg;
};

static void auth_work_run(uv_work_t *req)
{
    struct auth_work *w = req->data;
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    if (!cd)
        return;
    const char *out = crypt_rn(w->password, w->hash, cd, (int)sizeof(*cd));
    if (out && out[0] != '*') {
        /* Compare in constant time over the stored hash's length. */
        size_t n = strlen(w->hash), m = strlen(out);
        unsigned char diff = (unsigned char)(n != m);
        for (size_t i = 0; i < n; i++)
            diff |= (unsigned char)(w->hash[i] ^ (i < m ? out[i] : 0));
        w->ok = w->known && diff == 0;
    }
    memset(cd, 0, sizeof(*cd));
    free(cd);
}

static void auth_work_done(uv_work_t *req, int status)
{
    struct auth_work *w = req->data;
    bool ok = status == 0 && w->ok;
    memset(w->password, 0, strlen(w->password));
    free(w->password);
    free(w->hash);
    smtpd_auth_cb cb = w->cb;
    void *arg = w->arg;
    free(w);
    cb(arg, ok);
}

int smtpd_auth_check(uv_loop_t *loop, const struct smtpd_credentials *c, const char *user,
                     const char *password, smtpd_auth_cb cb, void *arg)
{
    struct auth_work *w = calloc(1, sizeof(*w));
    if (!w)
        return ERR_NOMEM;
    const char *hash = dummy_hash;
    for (size_t i = 0; c && i < c->n; i++) {
        if (strcmp(c->v[i].user, user) == 0) {
            hash = c->v[i].hash;
            w->known = true;
            break;
        }
    }
    w->hash = strdup(hash);
    w->password = strdup(password);
    w->cb = cb;
    w->arg = arg;
    w->req.data = w;
    if (!w->hash || !w->password || uv_queue_work(loop, &w->req, auth_work_run, auth_work_done)) {
        free(w->hash);
        free(w->password);
        free(w);
        return ERR_NOMEM;
    }
    return 0;
}
