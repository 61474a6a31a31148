/* memcpy, memmove, memcmp and bcmp for the static x86_64 musl build (issue 13).
 *
 * musl's x86_64 memcpy starts every copy of 8 bytes or more with `rep movsq` (tens of cycles
 * of microcode start-up) and its memcmp compares byte by byte. Rust moves small values and
 * compares short paths all the time: in a profile of the backup's restore, the musl build spent
 * a quarter of its CPU in memcpy, where the glibc build of the same code spends 3%. These
 * versions copy 1-32 bytes with two overlapping loads and stores, larger blocks 16 bytes at a
 * time, very large ones with `rep movsb` (fast on every x86_64 with ERMS), and compare 8 bytes
 * at a time.
 *
 * Built twice by build.rs: with HA_MEM_LIBC under the C library's names, linked into the musl
 * binary ahead of libc.a (whose members are then never pulled); and always under `ha_` names,
 * which the tests compare with Rust's own copies and comparisons on every size, alignment and
 * overlap. Compiled with -fno-builtin and -fno-tree-loop-distribute-patterns: the compiler must
 * not turn these loops back into calls to the functions they define.
 */
#include <emmintrin.h>
#include <stddef.h>
#include <stdint.h>

#ifdef HA_MEM_LIBC
#define HA(name) name
#else
#define HA(name) ha_##name
#endif

typedef uint64_t u64u __attribute__((may_alias, aligned(1)));
typedef uint32_t u32u __attribute__((may_alias, aligned(1)));
typedef uint16_t u16u __attribute__((may_alias, aligned(1)));

/* n <= 32. Every load comes before any store, so this is also a correct memmove. */
static inline void copy_small(unsigned char *d, const unsigned char *s, size_t n) {
    if (n >= 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + n - 16));
        _mm_storeu_si128((__m128i *)d, a);
        _mm_storeu_si128((__m128i *)(d + n - 16), b);
    } else if (n >= 8) {
        uint64_t a = *(const u64u *)s, b = *(const u64u *)(s + n - 8);
        *(u64u *)d = a;
        *(u64u *)(d + n - 8) = b;
    } else if (n >= 4) {
        uint32_t a = *(const u32u *)s, b = *(const u32u *)(s + n - 4);
        *(u32u *)d = a;
        *(u32u *)(d + n - 4) = b;
    } else if (n >= 2) {
        uint16_t a = *(const u16u *)s, b = *(const u16u *)(s + n - 2);
        *(u16u *)d = a;
        *(u16u *)(d + n - 2) = b;
    } else if (n == 1) {
        *d = *s;
    }
}

/* n > 16, and d below s or not overlapping: each 16-byte block is read before any store
 * reaches it. The last block is read first, as stores may reach it before the loop does. */
static inline void copy_forward(unsigned char *d, const unsigned char *s, size_t n) {
    __m128i last = _mm_loadu_si128((const __m128i *)(s + n - 16));
    unsigned char *end = d + n - 16;
    while (n > 16) {
        _mm_storeu_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
        d += 16;
        s += 16;
        n -= 16;
    }
    _mm_storeu_si128((__m128i *)end, last);
}

/* n > 16, d above s and overlapping: the mirror image of copy_forward. */
static inline void copy_backward(unsigned char *d, const unsigned char *s, size_t n) {
    __m128i first = _mm_loadu_si128((const __m128i *)s);
    while (n > 16) {
        n -= 16;
        _mm_storeu_si128((__m128i *)(d + n), _mm_loadu_si128((const __m128i *)(s + n)));
    }
    _mm_storeu_si128((__m128i *)d, first);
}

void *HA(memcpy)(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n <= 32) {
        copy_small(d, s, n);
    } else if (n >= 4096) {
        __asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
    } else {
        copy_forward(d, s, n);
    }
    return dst;
}

void *HA(memmove)(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (n <= 32) {
        copy_small(d, s, n);
    } else if ((uintptr_t)d - (uintptr_t)s >= n) {
        /* d below s (the difference wrapped) or past the end of s: forward is safe. */
        copy_forward(d, s, n);
    } else {
        copy_backward(d, s, n);
    }
    return dst;
}

int HA(memcmp)(const void *a, const void *b, size_t n) {
    const unsigned char *p = a, *q = b;
    while (n >= 8) {
        uint64_t x = *(const u64u *)p, y = *(const u64u *)q;
        if (x != y) {
            /* The first differing byte decides: big-endian order makes it the most
             * significant one. */
            x = __builtin_bswap64(x);
            y = __builtin_bswap64(y);
            return x < y ? -1 : 1;
        }
        p += 8;
        q += 8;
        n -= 8;
    }
    for (; n; n--, p++, q++) {
        if (*p != *q) {
            return *p < *q ? -1 : 1;
        }
    }
    return 0;
}

int HA(bcmp)(const void *a, const void *b, size_t n) {
    return HA(memcmp)(a, b, n);
}
