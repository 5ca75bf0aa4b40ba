/*
 * err.c - texts for the mechanical error codes of base.h.
 */
#include "base.h"

const char *err_str(int err)
{
    switch ((enum err)err) {
    case ERR_OK:
        return "success";
    case ERR_NOMEM:
        return "out of memory";
    case ERR_IO:
        return "input/output error";
    case ERR_TIMEOUT:
        return "timed out";
    case ERR_PROTO:
        return "protocol error";
    case ERR_TLS:
        return "TLS error";
    case ERR_DNS:
        return "DNS lookup failed";
    case ERR_FULL:
        return "storage full";
    case ERR_TOOBIG:
        return "size limit exceeded";
    case ERR_INVAL:
        return "invalid argument";
    case ERR_NOTFOUND:
        return "not found";
    case ERR_EXISTS:
        return "already exists";
    case ERR_CLOSED:
        return "closed";
    case ERR_VERSION:
        return "unsupported data version";
    case ERR_CORRUPT:
        return "corrupt data";
    case ERR_NOTYET:
        return "not implemented yet";
    case ERR_AGAIN:
        return "temporary failure, try again";
    case ERR_PERM:
        return "permission denied";
    }
    return "unknown error";
}
