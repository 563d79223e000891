#ifndef CVMD_ATOMIC_H
#define CVMD_ATOMIC_H
#include <stdint.h>
/* Sequentially consistent atomics on 32-bit words of memory shared between
 * processes (the interrupt state page of a device). Return the old value. */
static inline uint32_t cvmd_atomic_load32(const volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void cvmd_atomic_store32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cvmd_atomic_or32(volatile uint32_t *p, uint32_t v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cvmd_atomic_and32(volatile uint32_t *p, uint32_t v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cvmd_atomic_add32(volatile uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t cvmd_atomic_exchange32(volatile uint32_t *p, uint32_t v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
#endif
