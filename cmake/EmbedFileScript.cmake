# Script mode half of le_embed_file: turns INPUT into a C byte array.
file(READ ${INPUT} hex HEX)
string(LENGTH "${hex}" hexlen)
math(EXPR len "${hexlen} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n  " bytes "${bytes}")
file(WRITE ${OUTPUT} "/* Generated from ${INPUT} by EmbedFileScript.cmake; do not edit. */\n#include <stddef.h>\nconst char ${SYMBOL}[] = {\n  ${bytes}0x00\n};\nconst size_t ${SYMBOL}_len = ${len};\n")
