#!/bin/sh
# One-shot check before any service that holds a credential starts (service `preflight`, docker-compose.yml):
# refuses a credential still set to a placeholder of .env.example, however the stack is started (`make up`,
# `docker compose up`, `docker-compose up`, the AWS bootstrap). It names the variable, never its value.
#
# The credentials checked are the environment variables given to this service whose names end in _PASSWORD,
# _SECRET_KEY, _TOKEN or _USER; a placeholder is a value containing "change-me" or starting with "example-".
set -eu

bad=""
for name in $(env | sed -n 's/^\([A-Z0-9_]*\)=.*/\1/p' | sort); do
    case "$name" in
        *_PASSWORD | *_SECRET_KEY | *_TOKEN | *_USER) ;;
        *) continue ;;
    esac
    value=$(printenv "$name")
    case "$value" in
        *change-me* | example-*) bad="$bad $name" ;;
        "") echo "error: $name is empty in .env" >&2; exit 1 ;;
    esac
done
if [ -n "$bad" ]; then
    for name in $bad; do
        echo "error: $name still holds the placeholder of .env.example; set your own value in .env" >&2
    done
    exit 1
fi
echo "preflight: no placeholder credentials"
