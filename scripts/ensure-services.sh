#!/usr/bin/env bash
# Make sure the system services the tests talk to are installed and running.
# As root it installs what is missing (Debian packages); it starts PostgreSQL when it is installed but down.
# Postfix is only installed: the tests and the outbound benchmark run throwaway instances of their own
# (mailgate.testing.postfix), so the system MTA is left unconfigured and is never started.
set -euo pipefail

PG_URL_HOST=${MAILGATE_TEST_PG_HOST:-127.0.0.1}
PG_PORT=${MAILGATE_TEST_PG_PORT:-5432}

have() { command -v "$1" >/dev/null 2>&1; }
as_root() { [ "$(id -u)" -eq 0 ]; }

apt_updated=0
apt_install() {
  if ! as_root; then
    echo "ensure-services: '$*' missing and not root: install it (apt-get install $*)" >&2
    return 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pg_ready() { pg_isready -q -h "$PG_URL_HOST" -p "$PG_PORT" 2>/dev/null; }

fresh_pg=0
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "ensure-services: installing PostgreSQL"
  apt_install postgresql postgresql-client
  fresh_pg=1
fi

if ! pg_ready; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  echo "ensure-services: starting PostgreSQL $version"
  if as_root; then
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  else
    pg_ctlcluster "$version" main start || true
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi

if [ "$fresh_pg" -eq 1 ] && as_root; then
  # a cluster we just installed: let the tests connect over loopback without a password
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  hba=/etc/postgresql/$version/main/pg_hba.conf
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  fi
fi

if pg_ready; then
  echo "ensure-services: PostgreSQL ready on $PG_URL_HOST:$PG_PORT"
else
  echo "ensure-services: PostgreSQL is not reachable on $PG_URL_HOST:$PG_PORT" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi

postfix_installed() { dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'ok installed'; }

if ! postfix_installed; then
  echo "ensure-services: installing Postfix (no system configuration, not started)"
  if as_root; then
    # "No configuration": no /etc/postfix/main.cf, so nothing can start a system MTA by accident
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  fi
  if apt_install postfix; then
    if have systemctl; then
      systemctl disable --quiet postfix.service >/dev/null 2>&1 || true
      [ -d /run/systemd/system ] && systemctl stop postfix.service >/dev/null 2>&1 || true
    fi
  elif [ "${CI:-}" = "true" ]; then
    exit 1
  fi
fi

if postfix_installed && [ -x /usr/sbin/smtp-sink ] && [ -x /usr/sbin/smtp-source ]; then
  echo "ensure-services: Postfix $(dpkg-query -W -f='${Version}' postfix) installed (smtp-sink, smtp-source)"
else
  echo "ensure-services: Postfix is not installed; the Postfix tests will be skipped" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi

# Spam engines, also only installed: the tests start private rspamd and spamd instances on free loopback
# ports (mailgate.testing.rspamd, mailgate.testing.spamd); the system daemons stay off.
spam_packages=(rspamd spamassassin spamd)
spam_missing=()
for pkg in "${spam_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || spam_missing+=("$pkg")
done

if [ "${#spam_missing[@]}" -gt 0 ]; then
  echo "ensure-services: installing ${spam_missing[*]} (not started)"
  if apt_install "${spam_missing[@]}"; then
    for svc in rspamd spamd; do
      if have systemctl; then
        systemctl disable --quiet "$svc.service" >/dev/null 2>&1 || true
        [ -d /run/systemd/system ] && systemctl stop "$svc.service" >/dev/null 2>&1 || true
      elif [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true  # a postinst without policy-rc.d may have started it
      fi
    done
  elif [ "${CI:-}" = "true" ]; then
    exit 1
  fi
fi

if command -v rspamd >/dev/null 2>&1 && [ -x /usr/sbin/spamd ]; then
  echo "ensure-services: rspamd $(dpkg-query -W -f='${Version}' rspamd), spamd $(dpkg-query -W -f='${Version}' spamd) installed"
else
  echo "ensure-services: rspamd or spamd is not installed; the spam engine tests will be skipped" >&2
  [ "${CI:-}" = "true" ] && exit 1
fi
