/*
 * conf.h - Convoy's configuration: an immutable snapshot of every parameter
 * in params.h, built from the built-in defaults, an optional file in Postfix
 * main.cf syntax, and command-line overrides (-o key=value).
 *
 * File syntax (as Postfix main.cf):
 *  - "name = value"; spaces around '=' and at both ends are ignored.
 *  - A line starting with whitespace continues the previous logical line.
 *  - Empty lines, and lines whose first non-space character is '#', are
 *    ignored (also between continuation lines).
 *  - The last setting of a name wins; -o overrides win over the file.
 *
 * Errors name the file and line of the logical line's start:
 *   convoy.conf:3: unknown parameter "mynetwork" (did you mean "mynetworks"?)
 *
 * Ownership: conf_load() returns a snapshot with one reference. Readers that
 * keep it across a reload take conf_ref() and drop it with conf_unref(); the
 * snapshot is freed when the last reference goes. A snapshot never changes.
 */
#ifndef CONVOY_CONF_H
#define CONVOY_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "base.h"
#include "params.h"

enum conf_type { CONF_STR, CONF_BOOL, CONF_INT, CONF_TIME, CONF_SIZE, CONF_LIST, CONF_ENUM };

/* A parsed list value: n NUL-terminated strings. */
struct conf_list {
    size_t n;
    char **v;
};

/* C types of the parameter types. */
#define CONF_CTYPE_STR const char *
#define CONF_CTYPE_BOOL bool
#define CONF_CTYPE_INT int64_t
#define CONF_CTYPE_TIME int64_t
#define CONF_CTYPE_SIZE uint64_t
#define CONF_CTYPE_LIST struct conf_list
#define CONF_CTYPE_ENUM const char *

/* Index of each parameter in the table. */
enum conf_param_id {
#define CONF_ID(name, type, def, check, desc) CONF_P_##name,
    CONF_PARAMS(CONF_ID)
#undef CONF_ID
        CONF_NPARAMS
};

/* One row of the table, for generic code (show, doc, JSON). */
struct conf_param_info {
    const char *name;
    enum conf_type type;
    const char *def;
    const char *check;
    const char *desc;
    size_t offset; /* of the typed field in struct conf */
};

/* An address family + prefix, for mynetworks. */
struct conf_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned bits;
};

/* host[:port] or [host]:port split into parts. */
struct conf_hostport {
    char host[256];
    uint16_t port;  /* 0 when absent */
    bool bracketed; /* [host] form: for relayhost, no MX lookup */
};

/* The snapshot. Typed fields are named as the parameters. */
struct conf {
#define CONF_FIELD(name, type, def, check, desc) CONF_CTYPE_##type name;
    CONF_PARAMS(CONF_FIELD)
#undef CONF_FIELD

    /* Derived values. */
    size_t n_mynetworks;
    struct conf_cidr *mynetworks_cidr;

    /* Where each value came from, for `config show -n`. */
    bool is_set[CONF_NPARAMS];
    char *raw[CONF_NPARAMS]; /* the text as set (NULL for defaults) */
    char *path;              /* the file read, or NULL for defaults only */
    int refs;
};

/* The table, CONF_NPARAMS rows in table order. */
const struct conf_param_info *conf_params(void);
/* Look a parameter up by name; NULL if unknown. */
const struct conf_param_info *conf_param_find(const char *name);

/*
 * Build a snapshot. path may be NULL (defaults only). overrides are n
 * "key=value" strings applied after the file. On error returns NULL and
 * appends one line per problem to errors (which may hold at most its max);
 * every problem in the file is reported, not just the first.
 */
struct conf *conf_load(const char *path, const char *const *overrides, size_t n_overrides,
                       struct buf *errors);
/* The same from text in memory; name stands for the file in errors. */
struct conf *conf_load_mem(const char *name, const char *text, size_t len, struct buf *errors);
struct conf *conf_ref(struct conf *c);
void conf_unref(struct conf *c);

/* The value of parameter id as text, as `config show` prints it (lists are
 * joined with ", "). Appends to out. */
int conf_value_text(const struct conf *c, enum conf_param_id id, struct buf *out);

/* Is the address in mynetworks? */
bool conf_mynetworks_match(const struct conf *c, const struct sockaddr *sa);

/* Parsers shared with the modules that use the values. 0 or ERR_INVAL. */
int conf_parse_cidr(const char *s, struct conf_cidr *out);
bool conf_cidr_match(const struct conf_cidr *net, const struct sockaddr *sa);
/* "host:port", "[v6]:port", "*:port", "host" (port 0 when allow_no_port). */
int conf_parse_hostport(const char *s, bool allow_no_port, struct conf_hostport *out);

/* Markdown reference of every parameter (docs/convoy.conf.5.md). */
int conf_doc_markdown(struct buf *out);

#endif
