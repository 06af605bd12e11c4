#!/usr/bin/env bash
# Spark 3.5 needs Java 17 (11 and 8 work too). Install OpenJDK 17 with apt when running as root
# and no usable Java is found; otherwise say exactly what to install.
set -euo pipefail
java_major() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[.".].*/\1/p' | head -n1
}
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=$(command -v java || true); fi
if [ -n "$JAVA" ]; then
  major=$(java_major "$JAVA")
  case "$major" in
    8|11|17) exit 0 ;;
  esac
  echo "Found Java $major at $JAVA; Spark 3.5 needs Java 8, 11 or 17." >&2
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing OpenJDK 17 (headless) with apt-get ..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
cat >&2 <<MSG
Java 17 is required by Spark and was not found.
Install it, then run make again:
  Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless
  macOS:         brew install openjdk@17
or point JAVA_HOME at an existing Java 17.
MSG
exit 1
