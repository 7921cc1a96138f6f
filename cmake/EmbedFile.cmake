# le_embed_file(INPUT OUTPUT SYMBOL) generates OUTPUT, a C file defining
# `const char SYMBOL[]` (NUL-terminated) and `const size_t SYMBOL_len` with the
# bytes of INPUT. It reruns whenever INPUT changes.
function(le_embed_file input output symbol)
  add_custom_command(
    OUTPUT ${output}
    COMMAND ${CMAKE_COMMAND} -DINPUT=${input} -DOUTPUT=${output} -DSYMBOL=${symbol}
            -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/EmbedFileScript.cmake
    DEPENDS ${input} ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/EmbedFileScript.cmake
    COMMENT "Embedding ${input}"
    VERBATIM)
endfunction()
