#!/usr/bin/env bash
# The tutorial's training pipeline as plain commands: each step is one process that a pipeline
# tool (Airflow, Argo, a cron job, make) can run, and a non-zero exit stops the pipeline.
# Run from the repository root after `almanac sample-data --out examples/fraud/data`.
set -euo pipefail
A=${ALMANAC:-almanac}
E=examples/fraud
WORK=${WORK:-pipeline-run}
mkdir -p "$WORK"

# Register the entity and both feature sets (safe to re-run: identical versions are no-ops),
# and materialize transactions:1 into the offline store.
$A entity create --file $E/entities/account.yaml
$A featureset create --file $E/featuresets/transactions/featureset_asset.yaml
$A featureset create --file $E/featuresets/accounts/featureset_asset.yaml
$A backfill transactions:1 --start 2023-01-01 --end 2023-03-02

# The features the model uses, as a retrieval spec.
$A retrieval-spec create --force --out "$WORK/spec" --features \
  transactions:1:transaction_amount_7d_sum,transactions:1:transaction_3d_count,transactions:1:transaction_amount_3d_avg,accounts:1:isUserRegistered,accounts:1:numPaymentRejects1dPerUser,accounts:1:accountAge

# 1. Feature retrieval: training data, point in time.
$A retrieve --spec "$WORK/spec" --observations $E/data/observations/train \
  --timestamp-column timestamp --output "$WORK/training" --overwrite
# 2. Training, holding out the last 20% of the time range.
$A train --data "$WORK/training" --label is_fraud --timestamp-column timestamp --out "$WORK/model"
# 3. Evaluation: stops the pipeline below the threshold.
$A evaluate --model "$WORK/model" --data "$WORK/training" --min-auc 0.7
# 4. Registration, with the retrieval spec packaged in the model folder.
$A model register --name fraud_model --version "${MODEL_VERSION:-1}" --path "$WORK/model"

# Batch inference with the registered model's features.
$A retrieve --model "fraud_model:${MODEL_VERSION:-1}" --observations $E/data/observations/batch_inference \
  --timestamp-column timestamp --output "$WORK/inference" --overwrite
$A predict --model "$WORK/model" --data "$WORK/inference" --out "$WORK/predictions.parquet"
