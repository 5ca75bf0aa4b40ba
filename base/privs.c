/*
 * privs.c - running as mail_owner: look the user up, hand the state
 * directory over to it, and give up root for good.
 *
 * The order convoyd follows (mta/convoyd.c): while still root it binds its
 * listeners and opens its state, then priv_chown_tree() gives every file it
 * (or an earlier root run) created in the state directory to mail_owner, and
 * priv_drop() sets the groups, the group and the user, in that order (after
 * setuid there is no right left to change groups), and proves that root
 * cannot be had back.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base.h"

int priv_lookup(const char *name, uid_t *uid, gid_t *gid, char *why, size_t whylen)
{
    errno = 0;
    struct passwd *pw = getpwnam(name);
    if (!pw) {
        snprintf(why, whylen, "no such user \"%s\"%s%s", name, errno ? ": " : "",
                 errno ? strerror(errno) : "");
        return ERR_NOTFOUND;
    }
    if (pw->pw_uid == 0 || pw->pw_gid == 0) {
        snprintf(why, whylen, "\"%s\" has user or group id 0: mail_owner must not be root", name);
        return ERR_INVAL;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

/* Give one entry to uid:gid when root owns it; recurse into directories.
 * Symbolic links are not followed (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW): a link
 * planted in the directory cannot make root chown a file elsewhere. */
static int chown_at(int dirfd, const char *name, uid_t uid, gid_t gid, int depth)
{
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return errno == ENOENT ? 0 : ERR_IO;
    if (S_ISLNK(st.st_mode))
        return 0;
    if (st.st_uid == 0 && fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0)
        return ERR_IO;
    if (!S_ISDIR(st.st_mode) || depth > 8)
        return 0;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return ERR_IO;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return ERR_IO;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        rc = chown_at(fd, e->d_name, uid, gid, depth + 1);
    }
    closedir(d);
    return rc;
}

int priv_chown_tree(const char *dir, uid_t uid, gid_t gid)
{
    return chown_at(AT_FDCWD, dir, uid, gid, 0);
}

int priv_drop(const char *name, uid_t uid, gid_t gid, char *why, size_t whylen)
{
    if (setgid(gid) != 0 || initgroups(name, gid) != 0) {
        snprintf(why, whylen, "cannot take group %ld of \"%s\": %s", (long)gid, name,
                 strerror(errno));
        return ERR_PERM;
    }
    if (setuid(uid) != 0) {
        snprintf(why, whylen, "cannot become user \"%s\" (%ld): %s", name, (long)uid,
                 strerror(errno));
        return ERR_PERM;
    }
    /* setuid() as root sets the real, effective and saved ids; if any of
     * them were left, or a capability let us back, stop here. */
    if (getuid() != uid || geteuid() != uid || getgid() != gid || getegid() != gid ||
        setuid(0) == 0 || seteuid(0) == 0 || setgid(0) == 0) {
        snprintf(why, whylen, "could still regain root after becoming \"%s\"", name);
        return ERR_PERM;
    }
    return 0;
}

int priv_become_dir_owner(const char *mail_owner, const char *dir, char *why, size_t whylen)
{
    if (geteuid() != 0)
        return 0;
    uid_t uid = 0;
    gid_t gid = 0;
    char name[256] = "";
    struct stat st;
    bool exists = stat(dir, &st) == 0;
    if (mail_owner && *mail_owner) {
        int rc = priv_lookup(mail_owner, &uid, &gid, why, whylen);
        if (rc)
            return rc;
        str_copy(name, mail_owner, sizeof(name));
    } else if (exists && st.st_uid != 0) {
        struct passwd *pw = getpwuid(st.st_uid);
        uid = st.st_uid;
        gid = pw ? pw->pw_gid : st.st_gid;
        if (pw)
            str_copy(name, pw->pw_name, sizeof(name));
    } else {
        return 0; /* root's directory, or none and no mail_owner: stay root */
    }
    if (!exists && mkdir(dir, 0750) == 0 && chown(dir, uid, gid) != 0) {
        snprintf(why, whylen, "cannot give %s to user %ld: %s", dir, (long)uid, strerror(errno));
        return ERR_IO;
    }
    if (*name)
        return priv_drop(name, uid, gid, why, whylen);
    /* An owner without a passwd entry: its ids, no supplementary groups. */
    if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0 || setuid(0) == 0) {
        snprintf(why, whylen, "cannot become user %ld: %s", (long)uid, strerror(errno));
        return ERR_PERM;
    }
    return 0;
}
