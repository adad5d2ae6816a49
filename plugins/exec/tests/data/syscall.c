/* Makes one raw system call and prints its result, for the sandbox tests: busybox has no
 * applet for most of the calls they check (keyctl, ptrace, get_mempolicy, clone3...).
 *
 *   syscall [-u UID] NR [ARG...]
 *
 * An ARG is a number (strtoul, so 0x... works) or `s:TEXT`, a pointer to TEXT. With -u the
 * call is made after setresuid(UID). Prints "ok RESULT" (exit 0) or "errno N TEXT" (exit 1).
 * Built static by the test (cc -static), so it runs in a rootfs holding only busybox. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int i = 1;
    if (argc > 3 && strcmp(argv[1], "-u") == 0) {
        unsigned long uid = strtoul(argv[2], NULL, 0);
        if (syscall(SYS_setresuid, uid, uid, uid) != 0) {
            printf("setresuid: errno %d %s\n", errno, strerror(errno));
            return 2;
        }
        i = 3;
    }
    if (i >= argc) {
        fprintf(stderr, "usage: syscall [-u UID] NR [ARG...]\n");
        return 2;
    }
    long nr = strtol(argv[i++], NULL, 0);
    unsigned long a[6] = {0};
    for (int k = 0; k < 6 && i < argc; k++, i++) {
        a[k] = strncmp(argv[i], "s:", 2) == 0 ? (unsigned long)(argv[i] + 2)
                                               : strtoul(argv[i], NULL, 0);
    }
    long r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (r == -1) {
        printf("errno %d %s\n", errno, strerror(errno));
        return 1;
    }
    printf("ok %ld\n", r);
    return 0;
}
