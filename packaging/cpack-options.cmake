# Read by cpack before each generator runs. Debian packages install under
# /usr, and the binary names its examples and docs by the prefix it was
# configured with, so a .deb needs a build configured for /usr.
if(CPACK_GENERATOR STREQUAL "DEB" AND NOT CPACK_PACKAGING_INSTALL_PREFIX STREQUAL "/usr")
  message(FATAL_ERROR "a .deb installs under /usr, but this build is configured "
    "for ${CPACK_PACKAGING_INSTALL_PREFIX}: configure a build for the package with "
    "cmake -S . -B build-deb -DCMAKE_INSTALL_PREFIX=/usr")
endif()
