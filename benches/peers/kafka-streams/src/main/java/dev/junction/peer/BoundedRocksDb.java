package dev.junction.peer;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.CompressionType;
import org.rocksdb.IndexType;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.RocksDB;
import org.rocksdb.WriteBufferManager;

/**
 * RocksDB's memory for every store of the process, bounded as junction's
 * {@code state.memory_bytes} bounds its own (128 MiB, of which 32 MiB for
 * memtables): one block cache shared by all stores, with memtables charged
 * to it, and index and filter blocks in it (Kafka Streams' documented
 * "BoundedMemoryRocksDBConfig"), partitioned. Memtables are 16 MiB each, as Kafka
 * Streams' default, and LZ4 compresses the SST files, as junction's.
 */
public final class BoundedRocksDb implements RocksDBConfigSetter {
    static final long TOTAL_BYTES = 128L << 20;
    static final long MEMTABLE_BYTES = 32L << 20;

    static {
        // Kafka Streams loads RocksDB's native library when it opens a store;
        // this class is loaded earlier, with the configuration.
        RocksDB.loadLibrary();
    }

    private static final Cache CACHE = new LRUCache(TOTAL_BYTES, -1, false, 0.1);
    private static final WriteBufferManager WRITE_BUFFERS = new WriteBufferManager(MEMTABLE_BYTES, CACHE);

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(CACHE);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        // Partitioned, as junction's (the top level pinned below only exists
        // then): a large file's single filter block would not stay in a
        // shard of the cache, and would be read again at every lookup.
        table.setIndexType(IndexType.kTwoLevelIndexSearch);
        table.setPartitionFilters(true);
        table.setMetadataBlockSize(4096);
        table.setPinTopLevelIndexAndFilter(true);
        options.setWriteBufferManager(WRITE_BUFFERS);
        options.setTableFormatConfig(table);
        options.setCompressionType(CompressionType.LZ4_COMPRESSION);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and the write buffer manager are shared: they live as long as the process.
    }
}
