#!/bin/sh
# The CDC user gets only what a binlog reader needs; its password is a compose secret.
set -eu
password=$(cat /run/secrets/mysql_cdc_password)
mysql -uroot -p"$(cat /run/secrets/mysql_root_password)" <<SQL
CREATE USER IF NOT EXISTS 'shardctl_cdc'@'%' IDENTIFIED BY '${password}';
GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'shardctl_cdc'@'%';
SQL
