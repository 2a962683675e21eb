// idmap-bind SRC DST FROM TO COUNT: bind-mount SRC on DST with an idmapped mount in which on-disk
// ids FROM..FROM+COUNT-1 appear as TO..TO+COUNT-1 (mount_setattr MOUNT_ATTR_IDMAP, Linux >= 5.12).
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/mount.h>
static void die(const char *m) { perror(m); exit(1); }
static void wr(const char *p, const char *s) {
    int fd = open(p, O_WRONLY);
    if (fd < 0 || write(fd, s, strlen(s)) != (ssize_t)strlen(s)) die(p);
    close(fd);
}
int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s SRC DST FROM TO COUNT\n", argv[0]); return 2; }
    int p[2]; if (pipe(p)) die("pipe");
    pid_t c = fork();
    if (c == 0) { char b; if (unshare(CLONE_NEWUSER)) die("unshare"); close(p[1]); read(p[0], &b, 1); _exit(0); }
    close(p[0]);
    char path[64], map[96];
    snprintf(map, sizeof map, "%s %s %s\n", argv[3], argv[4], argv[5]);
    usleep(1000);
    for (int i = 0; i < 1000; i++) { // wait until the child has unshared
        char a[64], b[64]; snprintf(a, sizeof a, "/proc/%d/ns/user", c);
        ssize_t n = readlink(a, b, sizeof b - 1); if (n > 0) { b[n] = 0; char s[64]; ssize_t m = readlink("/proc/self/ns/user", s, sizeof s - 1); s[m] = 0; if (strcmp(b, s)) break; }
        usleep(1000);
    }
    snprintf(path, sizeof path, "/proc/%d/uid_map", c); wr(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", c); wr(path, map);
    snprintf(path, sizeof path, "/proc/%d/ns/user", c);
    int ns = open(path, O_RDONLY); if (ns < 0) die("open userns");
    int t = syscall(SYS_open_tree, AT_FDCWD, argv[1], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (t < 0) die("open_tree");
    struct mount_attr a = { .attr_set = MOUNT_ATTR_IDMAP, .userns_fd = ns };
    if (syscall(SYS_mount_setattr, t, "", AT_EMPTY_PATH, &a, sizeof a)) die("mount_setattr");
    if (syscall(SYS_move_mount, t, "", AT_FDCWD, argv[2], MOVE_MOUNT_F_EMPTY_PATH)) die("move_mount");
    close(p[1]); waitpid(c, NULL, 0);
    return 0;
}
