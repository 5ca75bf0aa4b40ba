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

/* The role of an smtpd_listen entry ("ADDR:PORT[/ROLE]"). */
enum conf_listen_role {
    CONF_LISTEN_SMTP,        /* /smtp or none: relay for mynetworks or after AUTH */
    CONF_LISTEN_SUBMISSION,  /* /submission: RFC 6409, AUTH required, after STARTTLS */
    CONF_LISTEN_SUBMISSIONS, /* /submissions: RFC 8314 implicit TLS, AUTH required */
};
/* "smtp", "submission", "submissions". */
const char *conf_listen_role_name(enum conf_listen_role r);
/* Split an smtpd_listen entry into its address ("*:25", "[::1]:587") and
 * role. 0 or ERR_INVAL (no port, an unknown role). */
int conf_parse_listen(const char *s, struct conf_hostport *out, enum conf_listen_role *role);

/* Markdown reference of every parameter (docs/convoy.conf.5.md). */
int conf_doc_markdown(struct buf *out);

/* ---- routing tables (maps.c) ----------------------------------------------
 * Files of "KEY VALUE" lines in Postfix's table syntax. A load reports every
 * bad line as FILE:LINE: reason (appended to errors) and then returns NULL:
 * a table with an error is never half used. A loaded table never changes;
 * conf_map_free(NULL) does nothing. Lookups take O(log n).
 */
struct conf_map;
void conf_map_free(struct conf_map *m);
size_t conf_map_size(const struct conf_map *m);
const char *conf_map_path(const struct conf_map *m);
/* The parameter the table is for ("transport_maps", ...). */
const char *conf_map_kind_name(const struct conf_map *m);

/* transport_maps (a subset of Postfix's transport(5)). */
enum conf_transport_kind {
    CONF_TRANSPORT_SMTP,  /* smtp: or relay: (the same here) */
    CONF_TRANSPORT_ERROR, /* error:[5.x.y] text - bounce at once */
    CONF_TRANSPORT_DEFER, /* defer:[4.x.y] text - retry later */
};
struct conf_transport {
    enum conf_transport_kind kind;
    /* SMTP: the next hop. host "" means the recipient domain's own MX
     * hosts ("smtp:" with nothing after it); bracketed means no MX lookup;
     * port 0 means smtp_destination_port. */
    struct conf_hostport nexthop;
    char status[16]; /* ERROR/DEFER: the enhanced status code ("5.1.1") */
    char *text;      /* ERROR/DEFER: the text for the reply and the DSN */
};
struct conf_map *conf_transport_load(const char *path, struct buf *errors);
/* The entry for a recipient domain: the exact name, then ".parent" keys
 * from the nearest, then "*"; NULL when none. *matched (may be NULL) is
 * set to the key that matched, for the log. */
const struct conf_transport *conf_transport_find(const struct conf_map *m, const char *domain,
                                                 const char **matched);

/* smtp_sasl_password_maps: "[host]:port user:password" (also "host",
 * "[host]", "host:port"). Refused when the file is readable or writable by
 * others than its owner and group. Passwords are never put in errors. */
struct conf_map *conf_sasl_passwords_load(const char *path, struct buf *errors);
/* The credentials for a next hop: "[host]:port" (or "host:port"), then the
 * same without the port, then the other bracket form. 0 or ERR_NOTFOUND.
 * The strings live as long as the table. */
int conf_sasl_find(const struct conf_map *m, const char *host, uint16_t port, bool bracketed,
                   const char **user, const char **password);

/* smtpd_sender_login_maps: "address-or-@domain login[,login...]". */
struct conf_map *conf_sender_logins_load(const char *path, struct buf *errors);
/* May the client logged in as login use sender? The address is looked up
 * whole, then as @domain; a sender in neither is refused. The null sender
 * is always allowed. m NULL (no table): true. */
bool conf_sender_login_ok(const struct conf_map *m, const char *sender, const char *login);

/* destination_limits: "domain concurrency=N rate=N/s recipients=N" (any of
 * the three; rate also N/m or N/h). Keys as transport_maps, without "*". */
struct conf_dest_limit {
    unsigned concurrency; /* 0: not set */
    double rate_per_s;    /* 0: not set */
    unsigned recipients;  /* per message delivery (per transaction); 0: not set */
};
struct conf_map *conf_dest_limits_load(const char *path, struct buf *errors);
const struct conf_dest_limit *conf_dest_limit_find(const struct conf_map *m, const char *domain);

#endif
