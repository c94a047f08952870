# cmake -D IN=file -D OUT=file.inc -P embed_raw_string.cmake: writes IN's text as one C++ raw
# string literal to OUT (included by the source that uses it), so a page or script keeps living
# as a file of its own in the tree yet ships inside the binary.
file(READ "${IN}" _text)
string(FIND "${_text}" ")SYHTML\"" _clash)
if(NOT _clash EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter )SYHTML\" and cannot be embedded")
endif()
file(WRITE "${OUT}.tmp" "R\"SYHTML(${_text})SYHTML\"\n")
configure_file("${OUT}.tmp" "${OUT}" COPYONLY)  # rewrites OUT only when it changed
