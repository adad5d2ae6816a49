/* An i386 program for the sandbox tests (a linux/386 image's processes run natively on an
 * x86_64 host): writes "i386", then calls get_mempolicy (outside Docker's default profile,
 * no privilege needed from the kernel) and prints "ok" or "EPERM" (or "other"), then exits 0.
 * Assembled by the test with binutils: as --32, ld -m elf_i386 (no 32-bit libc needed). */
        .globl _start
        .text
_start:
        movl $4, %eax           /* write(1, hello, 5) */
        movl $1, %ebx
        movl $hello, %ecx
        movl $5, %edx
        int $0x80
        movl $275, %eax         /* get_mempolicy(NULL, NULL, 0, 0, 0) */
        xorl %ebx, %ebx
        xorl %ecx, %ecx
        xorl %edx, %edx
        xorl %esi, %esi
        xorl %edi, %edi
        int $0x80
        movl $ok, %ecx
        movl $3, %edx
        cmpl $0, %eax
        je report
        movl $eperm, %ecx
        movl $6, %edx
        cmpl $-1, %eax
        je report
        movl $other, %ecx
report:
        movl $4, %eax           /* write(1, ecx, edx) */
        movl $1, %ebx
        int $0x80
        movl $252, %eax         /* exit_group(0) */
        xorl %ebx, %ebx
        int $0x80
        .data
hello:  .ascii "i386\n"
ok:     .ascii "ok\n"
eperm:  .ascii "EPERM\n"
other:  .ascii "other\n"
