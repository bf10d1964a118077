/* Model configs from Python dicts: one table-driven parser for every model.
 * The binding checks types and that each value fits its C field; the C model
 * checks what the values mean (and names the field). */
#ifndef AVQ_PY_CONFIG_H
#define AVQ_PY_CONFIG_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>

typedef enum avq_py_field_kind {
    AVQ_PY_INT,  /* an int field */
    AVQ_PY_INTS, /* an int array field and its entry count (count_offset; (size_t)-1: none) */
    AVQ_PY_BOOL, /* an int field set to 0 / 1 by truth */
    AVQ_PY_STR,  /* a char buffer of `max_count` bytes; None or absent: "" */
} avq_py_field_kind;

typedef struct avq_py_field {
    const char *key;
    avq_py_field_kind kind;
    size_t offset;       /* of the value in the C struct */
    size_t count_offset; /* AVQ_PY_INTS: of the int that receives the entry count */
    int required;        /* else an absent key leaves `dflt` (AVQ_PY_INT, AVQ_PY_BOOL) */
    int dflt;
    int min_count, max_count; /* AVQ_PY_INTS entries; AVQ_PY_STR buffer bytes */
} avq_py_field;

#define AVQ_PY_NO_COUNT ((size_t)-1)

/* Fills `out` from dict `cfg` by the `n` fields; `what` names the config in
 * messages ("UNet config: missing 'context_dim'"). -1 with an exception set. */
int avq_py_parse_config(PyObject *cfg, const char *what, const avq_py_field *fields, size_t n, void *out);

/* The model configs (the field tables live with each binding): a dict of the
 * C struct's fields, keyword arguments included. -1 with an exception set. */
#include "models/autoencoder.h"
#include "models/unet.h"
int avq_py_unet_config(PyObject *cfg, avq_unet_config *out);          /* unet_binding.c */
int avq_py_encoder_config(PyObject *cfg, avq_ae_encoder_config *out); /* autoencoder_binding.c */
int avq_py_decoder_config(PyObject *cfg, avq_ae_decoder_config *out); /* autoencoder_binding.c */

#endif
